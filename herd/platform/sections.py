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


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------------------------- posttrain
# moved to herd.posttrain.config (the library owns its section); re-exported here for the Recipe
from herd.posttrain.config import DPOConfig, PostTrainConfig, RLConfig, SFTConfig

# --------------------------------------------------------------------------------------------- quantize
# moved to herd.quantize.config (its library); re-exported here for existing imports
from herd.quantize.config import CalibrationConfig, QuantizeConfig, QuantScheme, QuantSchemeName  # noqa: F401

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
# The deploy section lives with its library (herd.serve.config); re-exported here for older imports.
from herd.serve.config import DeployConfig, ReplicaConfig

__all__ = ["CalibrationConfig", "DPOConfig", "DeployConfig", "EvaluateConfig", "NeedleConfig", "PostTrainConfig",
           "QuantScheme", "QuantizeConfig", "RLConfig", "ReplicaConfig", "SFTConfig"]
