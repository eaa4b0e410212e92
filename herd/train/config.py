"""Config sections of the trainer: `pretrain` and `distill` (plus the sub-models they share).

The platform's `Recipe` holds `pretrain: PretrainConfig` and `distill: DistillConfig`. Defaults are the `tiny`
recipe: 2 Ray workers on CPU, a few hundred small steps, so `herd flow pretrain` / `herd flow distill` each finish
in a few minutes on a 2-core laptop. Built-in recipes (scout, maverick) override what differs.

Model shapes are NOT here: they come from the recipe's `models` section (`models[model]`), which the flow passes
to the trainer next to this section.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OptimConfig(_Section):
    """AdamW with MetaP param groups (per-group lr / weight-decay multipliers come from herd.model.metap)."""

    lr: float = Field(3e-3, gt=0, description="Peak learning rate (the base of MetaP's per-group multipliers).")
    weight_decay: float = Field(0.1, ge=0, description="Decoupled weight decay for matrices (norms/biases get 0).")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1.")
    beta2: float = Field(0.95, ge=0, lt=1, description="AdamW beta2 (0.95 as in Llama pretraining).")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    grad_clip: float = Field(1.0, ge=0, description="Clip the global grad norm to this value; 0 disables clipping.")


class ScheduleConfig(_Section):
    """Learning-rate schedule: linear warmup, then cosine decay or WSD (warmup-stable-decay)."""

    kind: Literal["cosine", "wsd"] = Field("cosine", description="cosine: decay over all steps after warmup; "
                                           "wsd: constant lr, then linear decay over the last `decay_fraction`.")
    warmup_steps: int = Field(20, ge=0, description="Linear warmup from 0 to the peak lr over this many steps.")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="Final lr as a fraction of the peak lr.")
    decay_fraction: float = Field(0.2, gt=0, le=1, description="WSD only: fraction of steps spent decaying.")


class CheckpointConfig(_Section):
    """How often the full training state goes to the artifact store through ray.train.report(checkpoint=...)."""

    every_steps: int = Field(50, ge=1, description="Checkpoint every K optimizer steps (and always at the end).")
    keep: int = Field(2, ge=1, description="Registered checkpoints to keep (older ones are deleted by Ray Train).")


class WorkersConfig(_Section):
    """Ray Train scaling and fault tolerance."""

    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker, NCCL backend; CPU workers use gloo.")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs Ray reserves per worker.")
    threads_per_worker: int = Field(0, ge=0, description="torch threads per worker; 0 = CPUs per worker "
                                    "(Ray sets OMP_NUM_THREADS=1, which starves a worker with 2+ CPUs).")
    strategy: Literal["ddp", "fsdp2"] = Field("ddp", description="ddp for small models; fsdp2 shards params, "
                                              "grads and optimizer state across workers (big models).")
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint before "
                              "the run fails.")


class _TrainBase(_Section):
    steps: int = Field(200, ge=1, description="Optimizer steps.")
    micro_batch_size: int = Field(4, ge=1, description="Sequences per worker per forward/backward.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step; the global "
                            "batch is micro_batch_size * grad_accum * num_workers sequences.")
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto", description="bf16: autocast matmuls to bf16 with fp32 master weights; fp32: no autocast; auto: "
        "bf16 on GPUs and on CPUs with native bf16 matmuls (AMX / AVX512-BF16), else fp32 (emulated bf16 "
        "matmuls measured 5x slower than fp32 on a CPU without them, docs/benchmarks.md).")
    seed: int = Field(0, description="Seeds init, data order and every RNG: equal seeds give equal weights.")
    log_every: int = Field(10, ge=1, description="Report metrics (loss, lr, grad norm, tokens/s, MFU, expert "
                           "load) every N steps; Ray Train V2 throttles reports, so not every step.")
    eval_batches: int = Field(4, ge=0, description="Held-out batches (the data's validation split) scored at "
                              "each checkpoint and at the end; 0 disables.")
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = Field(default_factory=CheckpointConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)

    @model_validator(mode="after")
    def _check_steps(self) -> _TrainBase:
        if self.schedule.warmup_steps >= self.steps:
            raise ValueError(
                f"schedule.warmup_steps ({self.schedule.warmup_steps}) must be smaller than steps ({self.steps}); "
                "lower warmup_steps or raise steps")
        if self.log_every > self.steps:
            raise ValueError(f"log_every ({self.log_every}) is larger than steps ({self.steps}): nothing would "
                             "be reported; set log_every <= steps")
        return self


class PretrainConfig(_TrainBase):
    """`pretrain` section: train `models[model]` (the teacher by default) from scratch on the packed shards."""

    model: str = Field("teacher", description="Key in the recipe's `models` section to pretrain.")


class AlphaConfig(_Section):
    """How the soft-target weight alpha is chosen (loss = a*T^2*KL(teacher_T||student_T) + (1-a)*CE).

    rule:
      hard     alpha = 0: hard labels only (the baseline).
      fixed    alpha = `value` for every token and step (Hinton et al. 2015).
      dynamic  alpha adapts (herd.train.losses.AlphaController): a global weight that rises from `min` to
               `max` as the student's CE closes in on the teacher's (EMAs; labels first, soft targets once
               the student is near its teacher), times a per-token weight that trusts the teacher where it
               predicts the true token well (Zhou et al. 2021).
    """

    rule: Literal["hard", "fixed", "dynamic"] = Field("dynamic", description="hard | fixed | dynamic.")
    value: float = Field(0.5, ge=0, le=1, description="fixed: the alpha used everywhere.")
    min: float = Field(0.1, ge=0, le=1, description="dynamic: lowest global alpha (student far behind).")
    max: float = Field(0.9, ge=0, le=1, description="dynamic: highest global alpha (student caught up).")
    ema: float = Field(0.9, ge=0, lt=1, description="dynamic: EMA decay of the student/teacher CE estimates.")
    per_token: bool = Field(True, description="dynamic: reweight alpha per token by the teacher's probability "
                            "of the true token (normalized to mean 1 over the batch).")

    @model_validator(mode="after")
    def _check_range(self) -> AlphaConfig:
        if self.min > self.max:
            raise ValueError(f"alpha.min ({self.min}) must be <= alpha.max ({self.max})")
        return self


class DistillConfig(_TrainBase):
    """`distill` section: codistill `models[student]` from the frozen, pretrained `models[teacher]`.

    Teacher logits are computed on the fly in each worker (a frozen teacher beside the student), see
    docs/benchmarks.md "train" for the measured cost versus a top-k logit cache.
    """

    student: str = Field("student", description="Key in the recipe's `models` section to train.")
    teacher: str = Field("teacher", description="Key in `models` of the frozen teacher (from the pretrain flow).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the KL term (scaled by T^2).")
    alpha: AlphaConfig = Field(default_factory=AlphaConfig)
    teacher_every: int = Field(1, ge=1, description="Soft targets on every k-th micro-batch, hard labels on the "
                               "others (no teacher forward): ~1.7x the student's tokens/s at 4 on CPU.")

    @model_validator(mode="after")
    def _check_models(self) -> DistillConfig:
        if self.student == self.teacher:
            raise ValueError(f"distill.student and distill.teacher are both {self.student!r}; the student must "
                             "be a different model entry than its teacher")
        return self


__all__ = ["AlphaConfig", "CheckpointConfig", "DistillConfig", "OptimConfig", "PretrainConfig",
           "ScheduleConfig", "WorkersConfig"]
