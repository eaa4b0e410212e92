"""The ``posttrain`` recipe section: judge, SFT on hard prompts, online RL (GRPO family), DPO.

    posttrain:
      model: student                 # the base the post-training chain starts from (its distilled weights)
      judge: {model: teacher, k: 4}  # who grades SFT difficulty (pass@k, ties by reference loss)
      sft: {easy_fraction: 0.5, steps: 150}
      rl: {steps: 30, group_size: 8, filter_zero_variance: true}
      dpo: {steps: 20, beta: 0.1, nll_coef: 0.2}

SFT, RL and DPO are objectives on herd's one trainer, so each stage's section is a trainer section
(``herd.train.config._TrainBase``: steps, micro_batch_size, grad_accum, precision, optim, schedule, checkpoint,
workers) plus its own fields. Defaults are the tiny recipe's values.
"""

from __future__ import annotations

import importlib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from herd.train.config import CheckpointConfig, OptimConfig, ScheduleConfig, WorkersConfig, _TrainBase


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def resolve_callable(spec: str) -> object:
    """Import ``module:function`` and return the function; a clear ValueError when it is not importable."""
    module, sep, func = spec.partition(":")
    if not sep or not module or not func:
        raise ValueError(f"reward {spec!r} must be 'module:function' (e.g. 'mypkg.rewards:score')")
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ValueError(f"reward {spec!r}: cannot import module {module!r} ({e}); install it or fix the name") \
            from e
    fn = getattr(mod, func, None)
    if not callable(fn):
        raise ValueError(f"reward {spec!r}: {module!r} has no callable {func!r}")  # noqa: TRY004 (pydantic)
    return fn


class UserSource(_Section):
    """A user's own post-training data: jsonl or parquet, local or any fsspec URI (s3://...)."""

    uri: str = Field(min_length=1, description="File or glob (jsonl / parquet), local or s3://.")
    format: Literal["auto", "jsonl", "parquet"] = Field("auto", description="auto: from the file suffix.")
    capability: str = Field("user", min_length=1, description="Capability tag of these rows (batch mixing).")
    reward: str | None = Field(None, description="RL prompts only: 'module:function' scoring a completion, "
                               "called as fn(completion=str, row=dict) -> float; default: exact match of "
                               "the row's `answer`.")

    @field_validator("reward")
    @classmethod
    def _importable(cls, v: str | None) -> str | None:
        if v is not None:
            resolve_callable(v)  # fail at recipe load, not an hour into RL
        return v


class JudgeConfig(_Section):
    """The difficulty judge of SFT data (Llama 4: 'Llama models as a judge' dropped >50% of SFT data as easy)."""

    model: str = Field("teacher", description="Key in `models` whose trained weights judge (teacher by default; "
                       "its pretrain output when it is the teacher, else its distill output).")
    k: int = Field(4, ge=1, description="Samples per verifiable prompt (pass@k).")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of the judge (the one RL uses).")
    max_new_tokens: int = Field(48, ge=1, description="Generation budget per judged answer (a three-operand worked "
                                "answer is ~33 tokens, ~45 in steps).")
    batch_size: int = Field(64, ge=1, description="Answers decoded together (engine slots) and rows per "
                            "reference-loss batch.")
    seed: int = Field(0)
    threads: int = Field(1, ge=0, description="torch threads while judging (0: leave torch's setting). The judge "
                         "runs in the driver beside distillation, whose workers hold the cores: with 2 threads on "
                         "a 2-core box its parallel regions waited on a descheduled thread and it ended ~45 s after "
                         "distill; with 1 it takes its share and finishes inside it.")


SYSTEM_POOL = [
    "You are a helpful assistant. Answer briefly and correctly.",
    "Answer the question. End with the final answer.",
    "You are a careful math tutor.",
    "Reply concisely.",
]


class SFTConfig(_TrainBase):
    """Lightweight SFT on the examples the judge found hard; loss on assistant tokens (and their <|eot|>)."""

    steps: int = Field(150, ge=1)
    micro_batch_size: int = Field(16, ge=1)
    easy_fraction: float = Field(0.5, ge=0, lt=1, description="Share of each capability's examples dropped as "
                                 "easiest (Llama 4 dropped more than 50%).")
    max_seq_len: int = Field(256, ge=16, description="Conversations longer than this are truncated.")
    sources: list[UserSource] = Field(default_factory=list, description="Extra SFT chats ({messages: [...]}).")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=1e-3, weight_decay=0.0))
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(warmup_steps=10))
    checkpoint: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(every_steps=100))
    eval_batches: int = Field(0, ge=0)


class CurriculumConfig(_Section):
    """Tier thresholds on each prompt's EMA pass rate and the tier mix, moving from medium to hard."""

    ema: float = Field(0.5, gt=0, le=1, description="EMA weight of the newest group's pass rate.")
    easy_above: float = Field(0.8, gt=0, le=1, description="EMA pass rate >= this: easy.")
    hard_below: float = Field(0.3, ge=0, lt=1, description="EMA pass rate < this: hard.")
    unsolved_after: int = Field(16, ge=1, description="Attempts with no success before a prompt is 'unsolved'.")
    start: dict[str, float] = Field(default_factory=lambda: {"easy": 0.1, "medium": 0.6, "hard": 0.25,
                                                             "unsolved": 0.05},
                                    description="Tier mix at the first step.")
    end: dict[str, float] = Field(default_factory=lambda: {"easy": 0.05, "medium": 0.35, "hard": 0.55,
                                                           "unsolved": 0.05},
                                  description="Tier mix at the last step (linear in between).")
    cooldown: int = Field(4, ge=0, description="A prompt drawn at RL step s is not drawn again before step "
                          "s + cooldown while its capability has enough others (0: no limit). Without it a tier "
                          "of one or two prompts filled its share with the same ones every step: on tiny one "
                          "prompt was drawn in 16 of 20 steps, 4 prompts held 325 of RL's 394 right answers, and "
                          "RL learned those answers, not arithmetic (docs/benchmarks.md, 'posttrain').")

    @model_validator(mode="after")
    def _check(self) -> CurriculumConfig:
        for name, mix in (("start", self.start), ("end", self.end)):
            bad = set(mix) - {"easy", "medium", "hard", "unsolved"}
            if bad or not mix or any(v < 0 for v in mix.values()) or sum(mix.values()) <= 0:
                raise ValueError(f"curriculum.{name} {mix} must weight tiers easy/medium/hard/unsolved with "
                                 "non-negative numbers that do not all vanish")
        if self.hard_below >= self.easy_above:
            raise ValueError(f"curriculum.hard_below ({self.hard_below}) must be < easy_above ({self.easy_above})")
        return self


class RLConfig(_TrainBase):
    """Online RL (GRPO family, on-policy): group-relative advantages, token-level loss, adaptive filtering."""

    steps: int = Field(30, ge=1)
    log_every: int = Field(5, ge=1)
    micro_batch_size: int = Field(32, ge=1, description="Unused by RL: a rollout batch is split into "
                                  "grad_accum micro-batches.")
    prompts_per_step: int = Field(8, ge=1, description="Prompt groups trained per step (per worker).")
    group_size: int = Field(8, ge=2, description="Completions per prompt.")
    max_new_tokens: int = Field(48, ge=1, description="Completion budget; truncated ones are masked (DAPO): it "
                                "must hold the longest worked answer (~33 tokens, ~45 in steps), or that kind never trains.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature; the trainer's log-probs use it too.")
    scale_rewards: Literal["group", "none"] = Field("group", description="group: (r - mean)/(std + eps); none: "
                                                    "r - mean (Dr. GRPO).")
    clip_low: float = Field(0.2, gt=0, lt=1, description="PPO clip epsilon below 1.")
    clip_high: float = Field(0.28, gt=0, description="PPO clip epsilon above 1 (DAPO clip-higher).")
    kl_coef: float = Field(0.0, ge=0, description="k3 KL to the reference (the parent) per token; 0 = none.")
    filter_zero_variance: bool = Field(True, description="Drop groups whose rewards are all equal and refill.")
    max_refill_rounds: int = Field(3, ge=0, description="Extra generation rounds to refill dropped groups.")
    oversample: float = Field(1.0, ge=1, description="Prompts drawn per generation round = missing groups x "
                              "this (DAPO over-sampling): with a weak policy most groups are all-wrong, so drawing "
                              "more up front fills the batch in one round instead of several; every group that "
                              "survives the filter is trained.")
    sampler: Literal["engine", "static"] = Field("engine", description="engine: herd's continuous-batching "
                                                 "engine (herd.serve.engine); static: one static KV-cache batch.")
    format_reward: float = Field(0.1, ge=0, description="Added for a completion that ends with <|eot|>; "
                                 "arithmetic: a worked answer on the question's numbers ('a + b [= steps] = N. The answer is N.')")
    format_needs_correct: bool = Field(True, description="Only a correct answer earns format_reward (DAPO filters "
                                       "groups by accuracy). Else a group of wrong answers that differ in format "
                                       "alone passes the zero-variance filter and, scaled by its std, trains "
                                       "well-formatted wrong results as hard as a correct answer: on tiny, 3 RL "
                                       "seeds raised sampled pass@1 by +0.013 to +0.024 (each p < 0.002) with it, "
                                       "0.000 to +0.009 without.")
    require_work: bool = Field(True, description="Arithmetic is solved only by a worked answer whose operands are "
                               "the question's numbers: a guessed result earns nothing.")
    curriculum: bool = Field(True, description="Sample prompts by ledger tier (else uniformly).")
    tiers: CurriculumConfig = Field(default_factory=CurriculumConfig)
    capabilities: dict[str, float] = Field(default_factory=lambda: {"arithmetic": 0.75, "knowledge": 0.25},
                                           description="Share of each capability's prompts per batch.")
    system_prompts: list[str] = Field(default_factory=lambda: list(SYSTEM_POOL),
                                      description="A system instruction drawn per rollout ('' = none).")
    system_prompt_prob: float = Field(0.5, ge=0, le=1, description="Chance a rollout gets a system prompt.")
    onpolicy_pairs: int = Field(128, ge=0, description="Prompts rolled out by the final policy to build DPO "
                                "pairs (correct vs incorrect).")
    sources: list[UserSource] = Field(default_factory=list, description="Extra RL prompts ({prompt, answer}).")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=3e-4, weight_decay=0.0))
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(warmup_steps=2, min_lr_ratio=1.0))
    checkpoint: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(every_steps=10))
    workers: WorkersConfig = Field(default_factory=lambda: WorkersConfig(num_workers=1, cpus_per_worker=2))
    eval_batches: int = Field(0, ge=0)


class DPOConfig(_TrainBase):
    """Lightweight DPO: sigmoid loss with beta, cached reference log-probs, optional NLL on the chosen answer."""

    steps: int = Field(20, ge=1)
    log_every: int = Field(5, ge=1)
    micro_batch_size: int = Field(8, ge=1, description="Pairs per worker per micro-batch (never split).")
    beta: float = Field(0.1, gt=0, description="Inverse temperature of the implicit reward.")
    nll_coef: float = Field(0.2, ge=0, description="Weight of the chosen answer's NLL (Llama 3 used 0.2).")
    max_seq_len: int = Field(256, ge=16)
    sources: list[UserSource] = Field(default_factory=list, description="Extra pairs {prompt, chosen, rejected}.")
    optim: OptimConfig = Field(default_factory=lambda: OptimConfig(lr=5e-5, weight_decay=0.0))
    schedule: ScheduleConfig = Field(default_factory=lambda: ScheduleConfig(warmup_steps=2, min_lr_ratio=1.0))
    checkpoint: CheckpointConfig = Field(default_factory=lambda: CheckpointConfig(every_steps=20))
    eval_batches: int = Field(0, ge=0)


class PostTrainConfig(_Section):
    """``posttrain`` section: SFT -> online RL -> light DPO (Llama 4's order) on one model of ``models``."""

    model: str = Field("student", description="Key in `models` to post-train (its distilled weights).")
    stages: list[Literal["sft", "rl", "dpo"]] = Field(
        default_factory=lambda: ["sft", "rl", "dpo"], min_length=1, description="Stages, run in this order.")
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    sft: SFTConfig = Field(default_factory=SFTConfig)
    rl: RLConfig = Field(default_factory=RLConfig)
    dpo: DPOConfig = Field(default_factory=DPOConfig)
    eval_items: int = Field(200, ge=1, description="Held-out arithmetic/knowledge items each stage is compared "
                            "with its parent on (paired).")
    workers: WorkersConfig | None = Field(None, description="When set, the Ray Train workers of every stage "
                                          "(a cluster recipe sets it once instead of three times).")

    @model_validator(mode="after")
    def _unique_stages(self) -> PostTrainConfig:
        if len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages {self.stages} repeats a stage; list each of sft, rl, dpo at most once")
        if self.workers is not None:
            for stage in (self.sft, self.rl, self.dpo):
                if "workers" not in stage.model_fields_set:
                    object.__setattr__(stage, "workers", self.workers.model_copy())
        return self


__all__ = ["CurriculumConfig", "DPOConfig", "JudgeConfig", "PostTrainConfig", "RLConfig", "SFTConfig",
           "UserSource", "resolve_callable"]
