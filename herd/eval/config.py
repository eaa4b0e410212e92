"""The ``evaluate`` recipe section: which suites, how many items, the needle grid, sampling for pass@k.

    from herd.eval.config import EvaluateConfig
    EvaluateConfig(suites=["arithmetic", "multiple_choice"], arithmetic={"n_items": 1000})

Defaults are the tiny recipe's: every suite on every model in under 60 s per model on 2 CPU cores, with NIAH and
pass@k (the expensive suites) only on the final model and its parent (``full_suites_on: final``). Item counts
are chosen so the confidence intervals can tell models apart: >= 1,000 arithmetic problems (the synthetic
generator makes them cheaply, so the eval set tops them up with held-out problems when the task file has fewer).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from herd.platform.roles import Role

EvalSuite = Literal["perplexity", "knowledge", "arithmetic", "multiple_choice", "needle", "image"]
ALL_SUITES: tuple[str, ...] = ("perplexity", "knowledge", "arithmetic", "multiple_choice", "needle", "image")
HEAVY_SUITES: tuple[str, ...] = ("needle", "pass_at_k")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class NeedleConfig(_Section):
    """Needle-in-a-haystack grid: context length (in multiples of the training ``seq_len``) x needle depth."""

    length_multiples: list[float] = Field(
        default_factory=lambda: [0.5, 1.0, 2.0, 4.0, 8.0], min_length=1,
        description="Haystack lengths as multiples of data.packing.seq_len (past 1x is beyond training length).")
    context_lengths: list[int] | None = Field(
        None, description="Absolute haystack lengths in tokens; overrides length_multiples when set.")
    depths: list[float] = Field(default_factory=lambda: [0.0, 0.5, 1.0], min_length=1,
                                description="Needle position as a fraction of the haystack (0 = start).")
    samples_per_cell: int = Field(8, ge=1, description="Needles per (length, depth) cell.")
    max_new_tokens: int = Field(8, ge=1, description="Tokens generated for the answer (six-digit codes).")

    @model_validator(mode="after")
    def _check(self) -> NeedleConfig:
        if any(m <= 0 for m in self.length_multiples):
            raise ValueError(f"length_multiples {self.length_multiples} must all be > 0")
        if self.context_lengths is not None and any(n < 32 for n in self.context_lengths):
            raise ValueError(f"context_lengths {self.context_lengths} must all be >= 32 tokens")
        if any(not 0 <= d <= 1 for d in self.depths):
            raise ValueError(f"depths {self.depths} must all be in [0, 1]")
        return self

    def lengths(self, seq_len: int) -> list[int]:
        """The grid's context lengths in tokens for a model trained on ``seq_len``-token sequences."""
        if self.context_lengths is not None:
            return sorted(set(self.context_lengths))
        return sorted({max(32, round(m * seq_len)) for m in self.length_multiples})


class ArithmeticConfig(_Section):
    """Held-out word problems: greedy pass@1 on all items, sampled pass@k on a subset."""

    n_items: int = Field(1000, ge=1, description="Problems scored greedily (topped up with held-out problems "
                         "generated from a separate seed when the task file has fewer).")
    max_new_tokens: int = Field(48, ge=1, description="Generation budget per answer (a three-operand worked answer "
                                "is ~33 tokens, ~45 in steps; generation stops at the line's end).")
    pass_k: list[int] = Field(default_factory=lambda: [1, 4], min_length=1,
                              description="k values of sampled pass@k (unbiased estimator, Chen et al. 2021).")
    samples: int = Field(8, ge=1, description="Samples per problem for pass@k (n >= max(pass_k)).")
    pass_k_items: int = Field(100, ge=1, description="Problems used for sampled pass@k.")
    temperature: float = Field(0.8, gt=0, description="Sampling temperature for pass@k.")
    sampled_on: Literal["heavy", "posttrain"] = Field(
        "heavy", description="Models that get sampled pass@k: heavy = those full_suites_on names (with NIAH); "
        "posttrain = those too, and every post-trained model (sft, rl, dpo) and its parent, so each post-training "
        "stage is paired with its parent on sampled pass@1 (what RL optimizes) as well as greedy.")

    @model_validator(mode="after")
    def _check(self) -> ArithmeticConfig:
        if max(self.pass_k) > self.samples:
            raise ValueError(f"pass_k {self.pass_k} needs samples >= {max(self.pass_k)}; raise arithmetic.samples")
        return self


class EvaluateConfig(_Section):
    """``evaluate`` section: which suites run on which models, the set sizes, the needle grid."""

    roles: list[Role] | None = Field(None, description="Roles to evaluate (teacher, student, sft, ...); "
                                     "None = every model output of the pipeline that declares a role.")
    suites: list[EvalSuite] = Field(
        default_factory=lambda: list(ALL_SUITES), min_length=1,
        description="perplexity | knowledge | arithmetic | multiple_choice | needle | image.")
    full_suites_on: Literal["all", "final"] = Field(
        "final", description="Run NIAH and pass@k on every model (all) or only the last stage and its parent.")
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    needle: NeedleConfig = Field(default_factory=NeedleConfig)
    knowledge_items: int | None = Field(None, ge=1, description="Cap on knowledge QA / MC items (None = all).")
    perplexity_rows: int = Field(64, ge=1, description="Held-out packed sequences scored for perplexity.")
    image_items: int = Field(120, ge=1, description="Held-out digit images for image QA (vision models only).")
    batch_size: int = Field(128, ge=1, description="Sequences per forward pass (long prompts are also capped "
                            "at 16k tokens a batch). Decoding is per-step overhead bound: bigger batches, fewer steps.")
    max_new_tokens: int = Field(16, ge=1, description="Generation budget for knowledge QA answers (greedy).")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="Confidence level of every interval.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples (perplexity, paired bootstrap).")
    lm_eval_tasks: list[str] = Field(default_factory=list, description="Extra lm-eval-harness tasks run by "
                                     "`herd eval --harness` (built-in tasks download data; empty on a laptop).")
    generation: Literal["static", "engine"] = Field(
        "static", description="Generator of the suites' answers: static = herd.model.generate's length-sorted "
        "static batches, engine = herd.serve.engine's continuous batching (what `herd serve` answers with). Same "
        "greedy answers (tests/eval/test_lm_engine.py); static is the default because it measured faster "
        "(tiny teacher, every suite: 30.4 s vs 50.2 s; docs/benchmarks.md, evaluate).")
    threads: int = Field(0, ge=0, description="torch threads per model process (0 = the CPUs Ray gave it).")
    seed: int = Field(0, description="Seed of item sampling, pass@k sampling and the bootstrap.")

    def runs(self, suite: str) -> bool:
        return suite in self.suites


__all__ = ["ALL_SUITES", "HEAVY_SUITES", "ArithmeticConfig", "EvalSuite", "EvaluateConfig", "NeedleConfig"]
