"""ModelConfig: the Llama 4 model's shape, one field per transformers ``Llama4TextConfig`` field.

Field names are transformers' own (``hidden_size``, ``num_local_experts``, ``no_rope_layer_interval``, ...) so a
recipe reads like the ``config.json`` a Llama 4 checkpoint ships, and ``to_hf_dict()`` / ``from_hf_dict()`` are
plain renames. A few herd-only fields (router load balancing) are not written to ``config.json``.
``vision`` holds the early-fusion vision tower's config (``herd.model.vision_config.VisionConfig``) or None for a
text-only model.

    from herd.model import ModelConfig
    cfg = ModelConfig(hidden_size=256, num_hidden_layers=4, num_local_experts=16)
    cfg.num_params(), cfg.num_active_params()
    json.dump(cfg.to_hf_dict(), open("config.json", "w"))

Special-token ids default to herd's tokenizer (special tokens first): bos 0, eos [1, 4, 5], pad 12, <|patch|> 9.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from herd.model.vision_config import VisionConfig

# config.json keys transformers writes that are derived from other fields or do not affect the forward pass.
_HF_IGNORED_KEYS = {
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "use_cache",
    "layer_types",
    "output_router_logits",
    "router_jitter_noise",
    "_name_or_path",
    "attention_dropout",
    "attention_bias",
    "hidden_act",
    "for_llm_compressor",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
    "cache_implementation",
    "fixed_size_rope",
    "multi_modal_projector_bias",
    "id2label",
    "label2id",
    "problem_type",
    "tokenizer_class",
    "chunk_size_feed_forward",
    "is_encoder_decoder",
    "add_cross_attention",
    "tie_encoder_decoder",
    "pruned_heads",
    "torchscript",
    "finetuning_task",
}
_HF_TOP_LEVEL_IGNORED = {
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "tie_word_embeddings",
    "_name_or_path",
    "text_config",
    "vision_config",
}


class RopeParameters(BaseModel):
    """RoPE frequencies: transformers' ``rope_parameters`` dict (``default`` or Llama 3 ``llama3`` scaling)."""

    model_config = ConfigDict(extra="forbid")

    rope_type: Literal["default", "llama3"] = "default"
    rope_theta: float = Field(500000.0, gt=0, description="RoPE base θ.")
    factor: float | None = Field(None, gt=0, description="llama3: divide low frequencies by this factor.")
    low_freq_factor: float | None = Field(
        None, gt=0, description="llama3: wavelengths above N0/low are scaled."
    )
    high_freq_factor: float | None = Field(
        None, gt=0, description="llama3: wavelengths below N0/high are kept."
    )
    original_max_position_embeddings: int | None = Field(
        None,
        gt=0,
        description="llama3: N0, the context the base frequencies were trained for "
        "(transformers fills it from max_position_embeddings when absent).",
    )

    @model_validator(mode="after")
    def _llama3_complete(self) -> RopeParameters:
        if self.rope_type == "llama3":
            missing = [
                k for k in ("factor", "low_freq_factor", "high_freq_factor") if getattr(self, k) is None
            ]
            if missing:
                raise ValueError(
                    f"rope_type 'llama3' needs {missing}; e.g. factor=8, low_freq_factor=1, "
                    "high_freq_factor=4 (Llama 4 Scout)"
                )
            if self.high_freq_factor < self.low_freq_factor:  # type: ignore[operator]
                raise ValueError("high_freq_factor must be >= low_freq_factor")
        return self


class ModelConfig(BaseModel):
    """A Llama 4 model (text decoder + optional vision tower). Fields follow transformers' Llama4TextConfig."""

    model_config = ConfigDict(extra="forbid")

    # --- shape ---
    vocab_size: int = Field(8192, gt=0, description="Embedding / lm_head rows; equals the tokenizer's size.")
    hidden_size: int = Field(256, gt=0, description="Model width H.")
    num_hidden_layers: int = Field(4, gt=0, description="Decoder layers L.")
    num_attention_heads: int = Field(4, gt=0, description="Query heads nH.")
    num_key_value_heads: int = Field(2, gt=0, description="Key/value heads nKV (GQA); must divide nH.")
    head_dim: int = Field(
        0,
        ge=0,
        description="Per-head width D (even). 0 derives hidden_size // heads; "
        "written explicitly to config.json because transformers' default is 128.",
    )
    intermediate_size: int = Field(
        512, gt=0, description="Width of each routed expert and the shared expert."
    )
    intermediate_size_mlp: int = Field(
        1024, gt=0, description="Width of the dense SwiGLU MLP on non-MoE layers."
    )
    max_position_embeddings: int = Field(4096, gt=0, description="Longest context (RoPE llama3 default N0).")
    rms_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every RMSNorm and of the q/k norm.")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of every weight.")
    tie_word_embeddings: bool = Field(False, description="lm_head shares embed_tokens' weight.")
    # --- mixture of experts ---
    num_local_experts: int = Field(4, gt=0, description="Routed experts E per MoE layer.")
    num_experts_per_tok: int = Field(1, gt=0, description="Top-k experts per token (vLLM serves only 1).")
    interleave_moe_layer_step: int = Field(2, ge=1, description="Every step-th layer is MoE (1: all MoE).")
    moe_layers: list[int] | None = Field(
        None,
        description="Explicit MoE layer indices; None derives "
        "range(step-1, L, step) (vLLM only honours the derived rule).",
    )
    # --- attention ---
    use_qk_norm: bool = Field(
        True, description="Weightless RMS norm on q and k after RoPE (RoPE layers only)."
    )
    no_rope_layers: list[int] | None = Field(
        None,
        description="Per layer: 1 = uses RoPE, 0 = NoPE (the name "
        "is transformers'). None derives it from no_rope_layer_interval.",
    )
    no_rope_layer_interval: int = Field(
        4, ge=1, description="Every interval-th layer is NoPE (full attention)."
    )
    attention_chunk_size: int | None = Field(
        128,
        gt=0,
        description="RoPE layers attend within aligned chunks "
        "of this many tokens; None: every layer full causal.",
    )
    attn_temperature_tuning: bool = Field(
        True, description="Scale NoPE-layer queries by 1 + attn_scale * ln(1 + floor((t + 1) / floor_scale))."
    )
    floor_scale: int = Field(8192, gt=0, description="Temperature tuning: positions per step of the log.")
    attn_scale: float = Field(0.1, ge=0, description="Temperature tuning: strength of the log term.")
    rope_parameters: RopeParameters = Field(default_factory=RopeParameters)
    # --- special tokens (herd's tokenizer puts the Llama 4 specials first) ---
    bos_token_id: int = Field(0, ge=0)
    eos_token_id: list[int] = Field(default_factory=lambda: [1, 4, 5], description="Stop tokens.")
    pad_token_id: int | None = Field(12, ge=0)
    image_token_index: int = Field(9, ge=0, description="<|patch|>: positions that receive image features.")
    boi_token_index: int = Field(6, ge=0, description="<|image_start|>.")
    eoi_token_index: int = Field(7, ge=0, description="<|image_end|>.")
    # --- router load balancing (herd training only; not in config.json) ---
    router_balance: Literal["aux_loss", "aux_free", "none"] = Field(
        "aux_loss",
        description="aux_loss: switch-style loss x router_aux_loss_coef (exports exactly); aux_free: "
        "DeepSeek-V3 per-expert bias on the top-k choice, updated by update_router_bias() (transformers and vLLM "
        "route without that bias, so save_hf warns when it is non-zero); none: no balancing.",
    )
    router_aux_loss_coef: float = Field(0.001, ge=0, description="Weight of the switch load-balancing loss.")
    router_bias_update_rate: float = Field(1e-3, ge=0, description="aux_free: bias step per update.")
    # --- vision ---
    vision: VisionConfig | None = Field(None, description="Early-fusion vision tower; None for text-only.")

    @field_validator("eos_token_id", mode="before")
    @classmethod
    def _eos_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, int) else v

    @model_validator(mode="before")
    @classmethod
    def _derive_head_dim(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("head_dim"):
            heads = data.get("num_attention_heads", cls.model_fields["num_attention_heads"].default)
            width = data.get("hidden_size", cls.model_fields["hidden_size"].default)
            if isinstance(heads, int) and isinstance(width, int) and heads > 0:
                data = {**data, "head_dim": width // heads}
        return data

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        H, nH, nKV, L = (
            self.hidden_size,
            self.num_attention_heads,
            self.num_key_value_heads,
            self.num_hidden_layers,
        )
        if H % nH:
            raise ValueError(f"num_attention_heads ({nH}) must divide hidden_size ({H})")
        if nH % nKV:
            raise ValueError(f"num_key_value_heads ({nKV}) must divide num_attention_heads ({nH})")
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even: RoPE rotates (2i, 2i+1) pairs")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ValueError(
                f"num_experts_per_tok ({self.num_experts_per_tok}) must be <= num_local_experts "
                f"({self.num_local_experts})"
            )
        if self.moe_layers is not None and any(not 0 <= i < L for i in self.moe_layers):
            raise ValueError(f"moe_layers {self.moe_layers} must be layer indices in [0, {L})")
        if self.no_rope_layers and (len(self.no_rope_layers) != L or set(self.no_rope_layers) - {0, 1}):
            raise ValueError(
                f"no_rope_layers must hold {L} entries of 1 (RoPE) or 0 (NoPE), got {self.no_rope_layers}"
            )
        if self.pad_token_id is not None and self.pad_token_id >= self.vocab_size:
            raise ValueError(f"pad_token_id ({self.pad_token_id}) must be < vocab_size ({self.vocab_size})")
        if self.vision is not None and self.image_token_index >= self.vocab_size:
            raise ValueError(f"image_token_index ({self.image_token_index}) must be < vocab_size")
        return self

    # --- derived layer pattern (transformers' rules) ---
    @property
    def moe_layer_ids(self) -> list[int]:
        if self.moe_layers is not None:
            return sorted(self.moe_layers)
        step = self.interleave_moe_layer_step
        return list(range(step - 1, self.num_hidden_layers, step))

    @property
    def rope_layer_flags(self) -> list[int]:
        """1 = RoPE (+ chunked attention, qk-norm) layer, 0 = NoPE (full attention, temperature) layer."""
        if self.no_rope_layers:
            return list(self.no_rope_layers)
        k = self.no_rope_layer_interval
        return [int((i + 1) % k != 0) for i in range(self.num_hidden_layers)]

    def is_moe_layer(self, i: int) -> bool:
        return i in set(self.moe_layer_ids)

    def uses_rope(self, i: int) -> bool:
        return bool(self.rope_layer_flags[i])

    # --- parameter counts ---
    def _layer_params(self, i: int, active: bool) -> int:
        H, D = self.hidden_size, self.head_dim
        attn = H * self.num_attention_heads * D * 2 + H * self.num_key_value_heads * D * 2
        norms = 2 * H
        if self.is_moe_layer(i):
            experts = self.num_experts_per_tok if active else self.num_local_experts
            ffn = self.num_local_experts * H + (experts + 1) * 3 * H * self.intermediate_size
        else:
            ffn = 3 * H * self.intermediate_size_mlp
        return attn + norms + ffn

    def _text_params(self, active: bool) -> int:
        embed = self.vocab_size * self.hidden_size
        head = 0 if self.tie_word_embeddings else embed
        layers = sum(self._layer_params(i, active) for i in range(self.num_hidden_layers))
        return embed + layers + self.hidden_size + head

    def num_params(self) -> int:
        """Total parameters (text decoder + vision tower and projector when present)."""
        return self._text_params(active=False) + self._vision_params()

    def num_active_params(self) -> int:
        """Parameters a text token passes through: routed experts count top-k, not E."""
        return self._text_params(active=True) + self._vision_params()

    def _vision_params(self) -> int:
        if self.vision is None:
            return 0
        # tower + adapter, plus the projector into the text width (multi_modal_projector.linear_1, no bias)
        return self.vision.num_params() + self.vision.vision_output_dim * self.hidden_size

    def flops_per_token(self, seq_len: int) -> int:
        """Forward matmul FLOPs per token (2 per multiply-add), attention over ``seq_len`` context included.

        Chunked layers attend to at most ``attention_chunk_size`` keys (on average half a chunk)."""
        dense = 2 * (
            self._text_params(active=True)
            - self.vocab_size * self.hidden_size * (0 if self.tie_word_embeddings else 1)
            - self.vocab_size * self.hidden_size
        )
        dense += 2 * self.vocab_size * self.hidden_size  # lm_head (the embedding lookup is not a matmul)
        attn = 0
        for i in range(self.num_hidden_layers):
            ctx = seq_len
            if self.uses_rope(i) and self.attention_chunk_size is not None:
                ctx = min(seq_len, self.attention_chunk_size)
            # q k^T and p v, causal: on average half the context
            attn += 2 * 2 * self.num_attention_heads * self.head_dim * ctx // 2
        return dense + attn

    # --- transformers config.json ---
    def text_hf_dict(self) -> dict[str, Any]:
        """The ``Llama4TextConfig`` dict (model_type ``llama4_text``)."""
        rope = self.rope_parameters.model_dump(exclude_none=True)
        if rope.get("rope_type") == "llama3":
            rope.setdefault("original_max_position_embeddings", self.max_position_embeddings)
        return {
            "model_type": "llama4_text",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "intermediate_size_mlp": self.intermediate_size_mlp,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "initializer_range": self.initializer_range,
            "rms_norm_eps": self.rms_norm_eps,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id),
            "tie_word_embeddings": self.tie_word_embeddings,
            "rope_parameters": rope,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_local_experts": self.num_local_experts,
            "moe_layers": self.moe_layer_ids,
            "interleave_moe_layer_step": self.interleave_moe_layer_step,
            "use_qk_norm": self.use_qk_norm,
            "output_router_logits": False,
            "router_aux_loss_coef": self.router_aux_loss_coef,
            "router_jitter_noise": 0.0,
            "no_rope_layers": self.rope_layer_flags,
            "no_rope_layer_interval": self.no_rope_layer_interval,
            "attention_chunk_size": self.attention_chunk_size,
            "attn_temperature_tuning": self.attn_temperature_tuning,  # a bool: 5.24's strict typing rejects 4
            "floor_scale": self.floor_scale,
            "attn_scale": self.attn_scale,
        }

    def to_hf_dict(self) -> dict[str, Any]:
        """config.json content: ``Llama4ForCausalLM`` (text-only) or ``Llama4ForConditionalGeneration``."""
        text = self.text_hf_dict()
        if self.vision is None:
            return {"architectures": ["Llama4ForCausalLM"], **text}
        return {
            "architectures": ["Llama4ForConditionalGeneration"],
            "model_type": "llama4",
            "text_config": text,
            "vision_config": self.vision.to_hf_dict(),
            "boi_token_index": self.boi_token_index,
            "eoi_token_index": self.eoi_token_index,
            "image_token_index": self.image_token_index,
            "tie_word_embeddings": self.tie_word_embeddings,
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Read a transformers Llama 4 config.json dict (text-only or multimodal, legacy rope keys too)."""
        d = dict(d)
        vision = None
        top: dict[str, Any] = {}
        if d.get("model_type") == "llama4" or "text_config" in d:
            if d.get("vision_config") is not None:
                vision = VisionConfig.from_hf_dict(d["vision_config"])
            top = {k: d[k] for k in ("boi_token_index", "eoi_token_index", "image_token_index") if k in d}
            unknown = set(d) - _HF_TOP_LEVEL_IGNORED - set(top)
            d = dict(d.get("text_config") or {})
            d.update({k: v for k, v in top.items()})
            del unknown  # other top-level keys (processor hints, quantization) do not affect the model
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"hidden_act {d['hidden_act']!r} is not supported: Llama 4 uses silu")
        if d.get("attention_bias"):
            raise ValueError("attention_bias=true is not supported: Llama 4 has no attention biases")
        if "rope_parameters" not in d:  # legacy rope_theta + rope_scaling
            rope = dict(d.pop("rope_scaling", None) or {})
            rope.setdefault("rope_type", rope.pop("type", "default"))
            rope["rope_theta"] = d.pop("rope_theta", 500000.0)
            d["rope_parameters"] = rope
        d.pop("rope_scaling", None)
        d.pop("rope_theta", None)
        rp = {k: v for k, v in d["rope_parameters"].items() if k in RopeParameters.model_fields}
        d["rope_parameters"] = rp
        if isinstance(d.get("attn_temperature_tuning"), int):  # Meta's original configs write 4
            d["attn_temperature_tuning"] = bool(d["attn_temperature_tuning"])
        if d.get("no_rope_layers") == []:
            d["no_rope_layers"] = None
        for key in list(d):
            if key in _HF_IGNORED_KEYS:
                d.pop(key)
        if d.get("head_dim") is None:
            d.pop("head_dim", None)
        fields = {k: v for k, v in d.items() if k in cls.model_fields}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(
                f"config.json has keys herd's ModelConfig does not know: {unknown}; is this a Llama 4 config?"
            )
        cfg = cls(**{**fields, "vision": vision, **overrides})
        # transformers writes the derived layer patterns out; keep them only when they are not the derived ones
        derived = cfg.model_copy(update={"moe_layers": None, "no_rope_layers": None})
        if cfg.moe_layers is not None and cfg.moe_layer_ids == derived.moe_layer_ids:
            cfg = cfg.model_copy(update={"moe_layers": None})
        if cfg.no_rope_layers is not None and cfg.rope_layer_flags == derived.rope_layer_flags:
            cfg = cfg.model_copy(update={"no_rope_layers": None})
        return cfg
