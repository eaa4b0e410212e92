"""Recipe sections of the later stages: ``posttrain``, ``quantize``, ``evaluate`` and ``deploy``.

They live here until each stage's library exists; then they move next to it (as ``DataConfig`` lives in
``herd.data.config``) and this module re-exports them. Defaults are the ``tiny`` recipe's values: a 2-core
laptop finishes each stage in minutes. Each library function receives only its own section.

    from herd.platform.sections import QuantizeConfig
    QuantizeConfig(schemes=[{"scheme": "int4", "group_size": 32}])
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herd.train.config import WorkersConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- posttrain
class SFTConfig(_Section):
    """Supervised fine-tuning on chat data, loss on assistant turns only."""

    steps: int = Field(120, ge=1, description="Optimizer steps.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate (cosine decay after warmup).")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    micro_batch_size: int = Field(8, ge=1, description="Sequences per worker per forward/backward.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    max_seq_len: int = Field(256, ge=16, description="Conversations are truncated to this many tokens.")
    # Llama 4 pruned >50% of SFT data judged easy by a model judge to leave room for RL (Meta, 2025).
    easy_prune_fraction: float = Field(
        0.0, ge=0, lt=1, description="Drop this share of the conversations the model already answers correctly."
    )
    seed: int = Field(0, description="Data order and init seed.")


class RLConfig(_Section):
    """Online RL on verifiable prompts (GRPO: group-relative advantages, no value model)."""

    algorithm: Literal["grpo"] = Field("grpo", description="grpo (group-relative policy optimization).")
    steps: int = Field(40, ge=1, description="Policy updates.")
    prompts_per_step: int = Field(8, ge=1, description="Distinct prompts sampled per update.")
    group_size: int = Field(4, ge=2, description="Completions per prompt; advantages are relative within a group.")
    max_new_tokens: int = Field(32, ge=1, description="Generation budget per completion.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the rollouts.")
    lr: float = Field(1e-5, gt=0, description="Learning rate of the policy.")
    kl_coef: float = Field(0.02, ge=0, description="Weight of the KL penalty to the SFT reference policy.")
    clip_eps: float = Field(0.2, gt=0, lt=1, description="PPO-style ratio clipping.")
    reward: Literal["exact_match", "numeric"] = Field("numeric", description="How a completion is scored.")
    # Llama 4 filtered prompts with zero advantage (all completions right or all wrong): they carry no signal.
    drop_zero_advantage: bool = Field(True, description="Skip groups whose completions all scored the same.")
    seed: int = Field(0)


class DPOConfig(_Section):
    """Direct preference optimization against a frozen reference (the policy before DPO)."""

    steps: int = Field(60, ge=1, description="Optimizer steps.")
    lr: float = Field(5e-6, gt=0, description="Learning rate.")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    loss_type: Literal["sigmoid", "ipo", "hinge"] = Field("sigmoid", description="DPO loss variant.")
    micro_batch_size: int = Field(4, ge=1, description="Preference pairs per worker per step.")
    max_seq_len: int = Field(256, ge=16, description="Prompt+response truncation.")
    seed: int = Field(0)


class PostTrainConfig(_Section):
    """``posttrain`` section: SFT -> online RL -> light DPO (Llama 4's order) on one model of ``models``."""

    model: str = Field("student", description="Key in `models` to post-train (its distilled weights).")
    stages: list[Literal["sft", "rl", "dpo"]] = Field(
        default_factory=lambda: ["sft", "rl", "dpo"], min_length=1, description="Stages, run in this order."
    )
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    workers: WorkersConfig = Field(default_factory=WorkersConfig)

    @model_validator(mode="after")
    def _unique_stages(self) -> PostTrainConfig:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages {self.stages} repeats a stage; list each of sft, rl, dpo at most once")
        return self


# --------------------------------------------------------------------------------------------- quantize
QuantSchemeName = Literal["int8", "int4", "fp8"]


class QuantScheme(_Section):
    """One quantized variant. int8/int4 are weight-only (W8A16 / W4A16); fp8 is W8A8 with dynamic activations."""

    scheme: QuantSchemeName = Field(description="int8 (W8A16), int4 (W4A16) or fp8 (e4m3 W8A8).")
    method: Literal["rtn", "gptq"] = Field(
        "rtn", description="rtn: round to nearest; gptq: error-compensating, needs calibration data."
    )
    group_size: int = Field(0, ge=0, description="Weights per scale along the input dim; 0 = one per channel.")
    symmetric: bool = Field(True, description="Symmetric (no zero point) quantization.")

    @model_validator(mode="after")
    def _check(self) -> QuantScheme:
        if self.scheme == "fp8" and self.method != "rtn":
            raise ValueError("fp8 uses method rtn (scales are computed, not optimized); set method: rtn")
        if self.group_size and self.group_size % 8:
            raise ValueError(f"group_size {self.group_size} must be 0 (per channel) or a multiple of 8")
        return self


class CalibrationConfig(_Section):
    samples: int = Field(64, ge=1, description="Calibration sequences (GPTQ Hessians, fp8 static scales).")
    seq_len: int = Field(256, ge=8, description="Tokens per calibration sequence.")
    split: Literal["pretrain_val", "sft"] = Field("pretrain_val", description="Where calibration text comes from.")


class QuantizeConfig(_Section):
    """``quantize`` section: post-training quantization into llm-compressor's compressed-tensors format."""

    model: str = Field("student", description="Key in `models` whose post-trained weights are quantized.")
    schemes: list[QuantScheme] = Field(
        default_factory=lambda: [QuantScheme(scheme="int8"), QuantScheme(scheme="int4", method="gptq",
                                                                          group_size=32)],
        min_length=1,
        description="Variants to produce, each evaluated against the unquantized model.",
    )
    # Routers, embeddings, lm_head and the vision tower are small and sensitive; vLLM keeps them in bf16 too.
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head", "re:.*embed_tokens$", "re:.*router$", "re:.*vision_model.*",
                                 "re:.*multi_modal_projector.*"],
        description="Module names (or 're:<regex>') left unquantized.",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    max_ppl_increase: float = Field(
        0.10, ge=0, description="Fail the step if a variant's validation perplexity rises more than this share."
    )
    export_format: Literal["compressed-tensors"] = Field("compressed-tensors", description="On-disk format "
                                                         "(loads in vLLM and transformers).")

    @model_validator(mode="after")
    def _unique(self) -> QuantizeConfig:
        names = [s.scheme for s in self.schemes]
        if len(set(names)) != len(names):
            raise ValueError(f"schemes {names} repeats a scheme; list each of int8, int4, fp8 at most once")
        return self


# --------------------------------------------------------------------------------------------- evaluate
EvalSuite = Literal["perplexity", "knowledge", "arithmetic", "needle", "image", "chat"]


class NeedleConfig(_Section):
    """Needle-in-a-haystack grid: context length x needle depth, a few samples per cell."""

    context_lengths: list[int] = Field(default_factory=lambda: [128, 256, 512], min_length=1,
                                       description="Haystack lengths in tokens.")
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0], min_length=1,
                                description="Needle position as a fraction of the haystack (0 = start).")
    samples_per_cell: int = Field(4, ge=1, description="Needles per (length, depth) cell.")

    @model_validator(mode="after")
    def _check(self) -> NeedleConfig:
        if any(n <= 0 for n in self.context_lengths):
            raise ValueError(f"context_lengths {self.context_lengths} must all be > 0")
        if any(not 0 <= d <= 1 for d in self.depths):
            raise ValueError(f"depths {self.depths} must all be in [0, 1]")
        return self


class EvaluateConfig(_Section):
    """``evaluate`` section: which models and variants, which suites, and the needle grid."""

    models: list[str] = Field(default_factory=lambda: ["teacher", "student"], min_length=1,
                              description="Keys in `models` to evaluate (each at every stage it reached).")
    include_quantized: bool = Field(True, description="Also evaluate every quantized variant.")
    suites: list[EvalSuite] = Field(
        default_factory=lambda: ["perplexity", "knowledge", "arithmetic", "needle", "image"], min_length=1,
        description="perplexity | knowledge | arithmetic | needle | image | chat.",
    )
    needle: NeedleConfig = Field(default_factory=NeedleConfig)
    lm_eval_tasks: list[str] = Field(default_factory=list, description="Extra lm-eval-harness tasks "
                                     "(needs network/datasets; empty on the laptop).")
    limit: int | None = Field(None, ge=1, description="Cap examples per suite (None = all).")
    batch_size: int = Field(16, ge=1, description="Sequences per forward pass.")
    max_new_tokens: int = Field(16, ge=1, description="Generation budget for generative suites (greedy).")
    seed: int = Field(0)


# --------------------------------------------------------------------------------------------- deploy
class ReplicaConfig(_Section):
    min: int = Field(1, ge=0, description="Minimum replicas (0 allows scale to zero).")
    max: int = Field(1, ge=1, description="Maximum replicas.")
    target_ongoing_requests: float = Field(2.0, gt=0, description="Autoscaling target per replica.")

    @model_validator(mode="after")
    def _check(self) -> ReplicaConfig:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        return self


class DeployConfig(_Section):
    """``deploy`` section: an OpenAI-compatible endpoint on Ray Serve."""

    model: str = Field("student", description="Key in `models` to serve.")
    variant: Literal["bf16", "int8", "int4", "fp8"] = Field("bf16", description="Unquantized or a quantized "
                                                            "variant (must be listed in quantize.schemes).")
    engine: Literal["native", "vllm"] = Field("native", description="native: herd's PyTorch KV-cache decoder "
                                              "(CPU); vllm: Ray Serve LLM (needs the `gpu` extra).")
    host: str = Field("127.0.0.1", min_length=1, description="HTTP bind address (0.0.0.0 to expose).")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    route_prefix: str = Field("/", pattern=r"^/", description="Route prefix of the app (starts with /).")
    served_model_name: str = Field("herd", min_length=1, description="The `model` name clients send.")
    replicas: ReplicaConfig = Field(default_factory=ReplicaConfig)
    num_cpus: float = Field(0.5, ge=0, description="CPUs per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (vllm: per tensor-parallel rank).")
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs one replica spans.")
    max_model_len: int = Field(1024, ge=16, description="Longest prompt + completion in tokens.")
    max_ongoing_requests: int = Field(32, ge=1, description="Requests one replica accepts concurrently.")
    max_batch_size: int = Field(8, ge=1, description="native: sequences decoded together.")

    @model_validator(mode="after")
    def _check(self) -> DeployConfig:
        if self.engine == "native" and self.tensor_parallel_size != 1:
            raise ValueError("tensor_parallel_size > 1 needs engine: vllm")
        return self


__all__ = ["CalibrationConfig", "DPOConfig", "DeployConfig", "EvaluateConfig", "NeedleConfig", "PostTrainConfig",
           "QuantScheme", "QuantizeConfig", "RLConfig", "ReplicaConfig", "SFTConfig"]
