"""The ``quantize`` recipe section: which variants to make, how, on what calibration data, and the quality gate.

    from herd.quantize.config import QuantizeConfig
    QuantizeConfig(schemes=[{"scheme": "int4", "method": "gptq", "group_size": 64}])

torch-free (recipes and the CLI import it). ``herd.platform.sections`` re-exports these names.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

QuantSchemeName = Literal["int8", "int4", "fp8"]

# Default gate thresholds per scheme. int8 weight-only is ~lossless (>= 99 % recovery in every published
# figure, quantize-notes §4); int4 g128 GPTQ recovers 97-99.8 %; fp8 per-channel sits between the two. KL is in
# nats per token of the parent's distribution against the variant's, measured on held-out tokens, and is the
# primary check. top-1 agreement is loose on purpose: a briefly trained model has near-tied top logits, where
# int8 flips 5-6 % of argmaxes at a KL of 4e-5 (measured on the test recipe's 30-step student).
DEFAULT_GATE: dict[str, dict[str, float]] = {
    "int8": {"max_kl": 0.01, "min_top1": 0.90, "min_retention": 0.99},
    "int4": {"max_kl": 0.08, "min_top1": 0.80, "min_retention": 0.97},
    "fp8": {"max_kl": 0.03, "min_top1": 0.85, "min_retention": 0.98},
}
# group sizes torch's CPU int4 kernel (_weight_int4pack_mm_for_cpu) takes, within the 32..128 range
INT4_GROUP_SIZES = (32, 64, 128)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class GateConfig(_Section):
    """Thresholds a variant must pass before it is registered; unset fields take the scheme's default."""

    max_kl: float | None = Field(None, ge=0, description="Max mean KL(parent || variant) per held-out token (nats).")
    min_top1: float | None = Field(None, ge=0, le=1, description="Min share of held-out tokens whose argmax "
                                   "matches the parent's.")
    min_retention: float | None = Field(None, ge=0, description="Min mini-eval score of the variant as a share of "
                                        "the parent's, paired on the same items.")

    def resolved(self, scheme: str) -> dict[str, float]:
        """The thresholds for ``scheme``: set fields override DEFAULT_GATE."""
        out = dict(DEFAULT_GATE[scheme])
        out.update({k: v for k, v in self.model_dump().items() if v is not None})
        return out


class QuantScheme(_Section):
    """One quantized variant. int8/int4 are weight-only (W8A16 per-channel / W4A16 group-wise); fp8 is E4M3
    per-channel weights with dynamic per-token activations (W8A8)."""

    scheme: QuantSchemeName = Field(description="int8 (W8A16, per channel), int4 (W4A16, grouped) or fp8 (e4m3).")
    method: Literal["rtn", "gptq"] = Field(
        "rtn", description="rtn: round to nearest; gptq: error-compensating, needs calibration data."
    )
    group_size: int = Field(0, ge=0, description="Weights per scale along the input dim; 0 = one per channel "
                            "(int8, fp8). int4 takes 32, 64 or 128.")
    act_order: bool = Field(False, description="gptq: quantize columns by decreasing Hessian diagonal (the "
                            "scales stay per contiguous group, llm-compressor's actorder=static).")
    dampening: float = Field(0.01, gt=0, lt=1, description="gptq: share of mean(diag H) added to the diagonal.")
    gate: GateConfig = Field(default_factory=GateConfig)

    @model_validator(mode="after")
    def _check(self) -> QuantScheme:
        if self.scheme == "fp8" and self.method != "rtn":
            raise ValueError("fp8 uses method rtn (scales are computed, not optimized); set method: rtn")
        if self.scheme in ("int8", "fp8") and self.group_size:
            raise ValueError(f"{self.scheme} is per channel (torch's int8 kernel and vLLM's fp8 MoE take one scale "
                             f"per output row); set group_size: 0, not {self.group_size}")
        if self.scheme == "int4" and self.group_size not in INT4_GROUP_SIZES:
            raise ValueError(f"int4 group_size {self.group_size} is not supported; use one of {INT4_GROUP_SIZES} "
                             "(smaller groups: better quality, slightly bigger checkpoint)")
        return self

    @property
    def bits(self) -> int:
        return 4 if self.scheme == "int4" else 8


class CalibrationConfig(_Section):
    samples: int = Field(64, ge=1, description="Calibration sequences (GPTQ Hessians).")
    seq_len: int = Field(256, ge=8, description="Tokens per calibration sequence.")
    split: Literal["pretrain", "sft"] = Field("pretrain", description="Packed training data the calibration "
                                              "rows come from (sft: chat rows, for post-trained models).")
    # 32 rows of 256 tokens: ~8k held-out tokens pin the mean KL and top-1 agreement well below the gate's margins;
    # 64 rows doubled the gate's forward passes (7.8 s of a 38 s tiny quantize step on a busy box) for no decision
    # that changed. GPTQ keeps 64 calibration rows: 32 cost 4 % more held-out layer error for 0.8 s saved (tiny dpo).
    heldout_samples: int = Field(32, ge=1, description="Validation rows (never trained or calibrated on) for the "
                                 "gate's KL and top-1 agreement.")


class QuantizeConfig(_Section):
    """``quantize`` section: post-training quantization into compressed-tensors checkpoints vLLM and herd load."""

    model: str = Field("student", description="Key in `models` of the quantized model; the flow quantizes the "
                       "pipeline's final stage of it (the latest role: dpo > rl > sft > student > teacher).")
    schemes: list[QuantScheme] = Field(
        default_factory=lambda: [QuantScheme(scheme="int8"), QuantScheme(scheme="int4", method="gptq",
                                                                          group_size=32)],
        min_length=1,
        description="Variants to produce, each gated against the unquantized model.",
    )
    # Routers, embeddings, lm_head and the vision tower are small and sensitive; attention stays high precision
    # because vLLM permutes Llama 4's q/k rows on load but not packed weights (quantize-notes §1.2).
    ignore: list[str] = Field(
        default_factory=lambda: ["lm_head", "re:.*embed_tokens$", "re:.*router$", "re:.*self_attn.*",
                                 "re:.*vision_model.*", "re:.*multi_modal_projector.*"],
        description="Module names (or 're:<regex>') left unquantized.",
    )
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    eval_items: int = Field(100, ge=0, description="Items per suite of the gate's paired mini-evaluation: the first "
                            "N arithmetic and multiple-choice items of the pipeline's eval set, scored by herd.eval "
                            "for the parent and the variant; 0 skips it (KL and top-1 still gate).")
    dtype: Literal["bfloat16", "float32"] = Field("bfloat16", description="dtype of the export's high-precision "
                                                  "tensors and scales, and of the engine's activations.")
    export_format: Literal["compressed-tensors"] = Field("compressed-tensors", description="On-disk format "
                                                         "(loads in vLLM and transformers).")

    @model_validator(mode="after")
    def _unique(self) -> QuantizeConfig:
        names = [s.scheme for s in self.schemes]
        if len(set(names)) != len(names):
            raise ValueError(f"schemes {names} repeats a scheme; list each of int8, int4, fp8 at most once")
        return self


__all__ = ["DEFAULT_GATE", "INT4_GROUP_SIZES", "CalibrationConfig", "GateConfig", "QuantScheme", "QuantSchemeName",
           "QuantizeConfig"]
