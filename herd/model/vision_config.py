"""VisionConfig: the Llama 4 vision tower + projector shapes, one field per `Llama4VisionConfig` field.

Used as `ModelConfig.vision` (None for a text-only model). Field names and meanings follow transformers
5.24's `Llama4VisionConfig` one to one, so `to_hf_dict()` / `from_hf_dict()` are plain renames; the only
structural difference is that HF nests the RoPE base as `rope_parameters.rope_theta` while herd keeps a flat
`rope_theta`.

The shape constraints the forward pass relies on are checked here, with errors naming the field and the fix:

* head_dim = hidden_size / num_attention_heads is an integer divisible by 4 (2-D RoPE: x and y each get
  Dv/4 complex pairs);
* intermediate_size == hidden_size / pixel_shuffle_ratio**2 (the encoder MLP width doubles as the adapter's
  fc1 input width, because pixel shuffle concatenates a (1/r x 1/r) block of patches);
* projector_input_dim == projector_output_dim == vision_output_dim (adapter fc2 is square; the projector
  reads it);
* image_size / patch_size is an integer divisible by 1/pixel_shuffle_ratio (the grid is shuffled in blocks).

Defaults are the released Llama 4 Scout/Maverick tower (1408 wide, 34 layers, 336 px tiles), not
transformers' class defaults, which are inconsistent (vision_output_dim 7680 != projector_output_dim 4096)
and would not build. `norm_eps` and `hidden_act` exist for 1:1 round trips only: HF (and herd, for parity)
hard-codes LayerNorm eps 1e-5 and exact-erf GELU.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class VisionConfig(BaseModel):
    """Llama 4 vision encoder, pixel-shuffle adapter and projector (maps to `Llama4VisionConfig`)."""

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(1408, gt=0, description="Encoder width Cv.")
    hidden_act: str = Field("gelu", description="Kept for HF round trips; the forward uses exact GELU.")
    num_hidden_layers: int = Field(34, ge=0, description="Encoder depth.")
    num_attention_heads: int = Field(16, gt=0, description="Encoder heads; head_dim = hidden_size / heads.")
    num_channels: int = Field(3, gt=0, description="Image channels.")
    intermediate_size: int = Field(
        5632, gt=0, description="Encoder MLP width; must equal hidden_size / pixel_shuffle_ratio**2."
    )
    vision_output_dim: int = Field(4096, gt=0, description="Projector input width; = projector_output_dim.")
    image_size: int = Field(336, gt=0, description="Tile side in pixels.")
    patch_size: int = Field(14, gt=0, description="Patch side in pixels (Unfold kernel and stride).")
    norm_eps: float = Field(1e-5, gt=0, description="Kept for HF round trips; LayerNorm eps is always 1e-5.")
    vision_feature_select_strategy: str = Field("default", description="Unused by Llama 4; kept for HF.")
    initializer_range: float = Field(0.02, gt=0, description="Std of the normal init of Linear weights.")
    pixel_shuffle_ratio: float = Field(0.5, gt=0, le=1, description="Spatial downsampling ratio r.")
    projector_input_dim: int = Field(4096, gt=0, description="Adapter fc1 output width.")
    projector_output_dim: int = Field(4096, gt=0, description="Adapter fc2 width (square).")
    multi_modal_projector_bias: bool = Field(
        False, description="Must stay False: HF ignores it and vLLM would add adapter biases that HF lacks."
    )
    projector_dropout: float = Field(0.0, ge=0, lt=1, description="Dropout inside the adapter (training).")
    attention_dropout: float = Field(0.0, ge=0, lt=1, description="Attention dropout (training only).")
    rope_theta: float = Field(10000.0, gt=0, description="2-D vision RoPE base (HF rope_parameters).")

    @model_validator(mode="after")
    def _check_shapes(self) -> VisionConfig:
        h, nh = self.hidden_size, self.num_attention_heads
        if h % nh:
            raise ValueError(
                f"vision.hidden_size ({h}) must be divisible by vision.num_attention_heads ({nh}); "
                f"pick heads from the divisors of {h}"
            )
        if (h // nh) % 4:
            raise ValueError(
                f"vision head_dim = hidden_size/num_attention_heads = {h // nh} must be divisible by 4 "
                "(the 2-D RoPE gives x and y head_dim/4 complex pairs each); change vision.hidden_size or "
                "vision.num_attention_heads"
            )
        inv = 1.0 / self.pixel_shuffle_ratio
        if abs(inv - round(inv)) > 1e-6:
            raise ValueError(
                f"vision.pixel_shuffle_ratio ({self.pixel_shuffle_ratio}) must be 1/n for an integer n "
                "(e.g. 0.5)"
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"vision.image_size ({self.image_size}) must be divisible by vision.patch_size "
                f"({self.patch_size})"
            )
        side, s = self.image_size // self.patch_size, self.shuffle_factor
        if side % s:
            raise ValueError(
                f"vision.image_size/patch_size = {side} patches per side must be divisible by "
                f"1/pixel_shuffle_ratio = {s}; change vision.image_size or vision.patch_size"
            )
        if self.intermediate_size != h * s * s:
            raise ValueError(
                f"vision.intermediate_size ({self.intermediate_size}) must equal "
                f"hidden_size/pixel_shuffle_ratio**2 = {h * s * s}: it is both the encoder MLP width and the "
                "adapter input width after pixel shuffle"
            )
        if not (self.projector_input_dim == self.projector_output_dim == self.vision_output_dim):
            raise ValueError(
                "vision.projector_input_dim, vision.projector_output_dim and vision.vision_output_dim must "
                f"be equal (got {self.projector_input_dim}, {self.projector_output_dim}, "
                f"{self.vision_output_dim}): the adapter's fc2 is square and the projector reads its output"
            )
        if self.multi_modal_projector_bias:
            raise ValueError(
                "vision.multi_modal_projector_bias must be False: transformers builds the adapter without "
                "biases while vLLM would add them, so the two would compute different models"
            )
        return self

    # ---- derived shapes ---------------------------------------------------------------------------------
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        """Patches per tile (without the CLS token)."""
        return self.patches_per_side**2

    @property
    def shuffle_factor(self) -> int:
        """s = 1/pixel_shuffle_ratio: pixel shuffle merges s x s patches into one token."""
        return round(1.0 / self.pixel_shuffle_ratio)

    @property
    def tokens_per_tile(self) -> int:
        """`<|patch|>` tokens one tile contributes to the text sequence: (image/patch)**2 / s**2."""
        return self.num_patches // self.shuffle_factor**2

    def num_params(self) -> int:
        """Parameters of the tower and adapter (the projector into the text width is ModelConfig's)."""
        h, iv, p = self.hidden_size, self.intermediate_size, self.projector_output_dim
        patch = self.num_channels * self.patch_size**2 * h
        embeds = h + (self.num_patches + 1) * h + 2 * 2 * h  # class, positional, layernorm_pre/post
        layer = 4 * (h * h + h) + (h * iv + iv) + (iv * h + h) + 2 * 2 * h
        adapter = iv * self.projector_input_dim + p * p
        return patch + embeds + self.num_hidden_layers * layer + adapter

    # ---- transformers interop ---------------------------------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """Keyword arguments for `transformers.Llama4VisionConfig` (the `vision_config` of config.json)."""
        d = self.model_dump()
        theta = d.pop("rope_theta")
        d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> VisionConfig:
        """Build from a `vision_config` dict (config.json or `Llama4VisionConfig.to_dict()`).

        Keys that do not affect the model (model_type, vision_feature_layer, ...) are dropped; Meta's legacy
        top-level `rope_theta` is read as well as `rope_parameters.rope_theta`."""
        kwargs = {k: d[k] for k in cls.model_fields if k in d and k != "rope_theta"}
        rope = d.get("rope_parameters") or {}
        theta = rope.get("rope_theta", d.get("rope_theta"))
        if theta is not None:
            kwargs["rope_theta"] = theta
        for k in ("image_size", "patch_size"):
            v = kwargs.get(k)
            if isinstance(v, (list, tuple)):
                if len(set(v)) != 1:
                    raise ValueError(f"vision_config.{k}={v}: herd supports square tiles/patches only")
                kwargs[k] = int(v[0])
        return cls(**kwargs)
