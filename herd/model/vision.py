"""Early-fusion vision for Llama 4: ViT encoder, pixel-shuffle adapter, projector, merge into the text.

Single-device PyTorch that matches transformers' `Llama4VisionModel` + `Llama4MultiModalProjector` (module
names are HF's, so state-dict keys equal checkpoint keys under `vision_model.` / `multi_modal_projector.`):

    tiles (T, 3, img, img) -> Unfold(p) + Linear      patch_embedding.linear     (T, N, Cv), N = (img/p)^2
      -> append CLS LAST, + positional_embedding_vlm, layernorm_pre                (T, N+1, Cv)
      -> pre-LN encoder layers (LayerNorm + biases, MHA with 2-D complex RoPE, GELU MLP), bidirectional
      -> layernorm_post, drop CLS, pixel shuffle (s x s patches -> 1 token, channels [row off, col off, c])
      -> vision_adapter: GELU(fc2(GELU(fc1(x))))  (note the GELU after fc2)       (T, N/s^2, proj)
    multi_modal_projector.linear_1 -> text width H; `merge_image_features` scatters the T*N/s^2 rows, in
    order, into the text embeddings at the `<|patch|>` (`image_token_index`) positions.

The text decoder (`herd.model.decoder.Llama4`) owns a `VisionModel` and a `MultiModalProjector` when
`ModelConfig.vision` is set and merges the features before its first layer:

    from herd.model.vision import VisionModel, MultiModalProjector, merge_image_features
    feats = projector(vision_model(pixel_values))           # (T, N/s^2, H)
    embeds = merge_image_features(embeds, input_ids, feats, cfg.image_token_index)

RoPE tables are computed in fp32 and cached outside the module's buffers: `model.to(torch.bfloat16)` would
otherwise cast HF's complex `freqs_ci` buffer to a real tensor and silently drop its imaginary part.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from herd.model.vision_config import VisionConfig


def vision_rope_table(cfg: VisionConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """2-D axial RoPE rotations, complex64 (N+1, Dv/2), computed exactly as transformers' Llama4 vision tower.

    Patch n sits at col = n % side, row = n // side. With k = Dv/4 and w_j = theta^(-4j/Dv), complex pair
    j < k rotates by (col+1) w_j and pair k+j by (row+1) w_j. The CLS slot (last row) gets angle 0.
    """
    side = cfg.patches_per_side
    n = side * side
    idx = torch.arange(n, dtype=torch.int32, device=device)
    k = cfg.head_dim // 4
    # HF computes theta ** (arange(0, Dv/2, 2)[:k] / (Dv/2)): same numbers as theta^(-4j/Dv), kept op-for-op
    # so the fp32 table is bit-identical.
    half = cfg.head_dim // 2
    omega = 1.0 / (cfg.rope_theta ** (torch.arange(0, half, 2, device=device)[:k].float() / half))
    ang_x = (idx % side + 1)[:, None].float() * omega[None, :]
    ang_y = (idx // side + 1)[:, None].float() * omega[None, :]
    ang = torch.cat([ang_x, ang_y], dim=-1)  # (N, Dv/2)
    ang = torch.cat([ang, torch.zeros(1, half, device=device)], dim=0)  # CLS: identity rotation
    return torch.view_as_complex(torch.stack([torch.cos(ang), torch.sin(ang)], dim=-1).contiguous())


def apply_vision_rope(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate (2i, 2i+1) pairs of x (T, S, nH, Dv) by freqs (S, Dv/2) as complex numbers, in fp32."""
    xc = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    out = torch.view_as_real(xc * freqs[None, :, None, :]).flatten(3)
    return out.type_as(x)


class PatchEmbedding(nn.Module):
    """Unfold + Linear(no bias): the Linear weight equals a stride-p Conv2d weight reshaped to (Cv, 3*p*p)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.patch_size = cfg.patch_size
        self.linear = nn.Linear(cfg.num_channels * cfg.patch_size**2, cfg.hidden_size, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patches = F.unfold(pixel_values, kernel_size=self.patch_size, stride=self.patch_size)  # (T, 3p^2, N)
        return self.linear(patches.transpose(1, 2))


class VisionAttention(nn.Module):
    """Bidirectional multi-head attention with biases and 2-D RoPE on q and k (no GQA, no qk-norm)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.num_heads, self.head_dim = cfg.num_attention_heads, cfg.head_dim
        self.dropout = cfg.attention_dropout
        self.q_proj = nn.Linear(h, h, bias=True)
        self.k_proj = nn.Linear(h, h, bias=True)
        self.v_proj = nn.Linear(h, h, bias=True)
        self.o_proj = nn.Linear(h, h, bias=True)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        t, s, _ = x.shape
        shape = (t, s, self.num_heads, self.head_dim)
        q = apply_vision_rope(self.q_proj(x).view(shape), freqs)
        k = apply_vision_rope(self.k_proj(x).view(shape), freqs)
        v = self.v_proj(x).view(shape)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
            dropout_p=self.dropout if self.training else 0.0, scale=self.head_dim**-0.5,
        )
        return self.o_proj(o.transpose(1, 2).reshape(t, s, -1))


class VisionMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=True)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # exact (erf) GELU: HF hard-codes nn.GELU() whatever hidden_act says
        return self.fc2(F.gelu(self.fc1(x)))


class VisionEncoderLayer(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + MLP(LN(x)). LayerNorm eps is 1e-5 (HF ignores norm_eps)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.input_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.self_attn = VisionAttention(cfg)
        self.post_attention_layernorm = nn.LayerNorm(cfg.hidden_size)
        self.mlp = VisionMLP(cfg)

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), freqs)
        return x + self.mlp(self.post_attention_layernorm(x))


class VisionEncoder(nn.Module):
    """Holds `layers` so keys read `vision_model.model.layers.{j}.*` as in HF checkpoints."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VisionEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, freqs)
        return x


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """(T, n*n, C) -> (T, (n/s)^2, s*s*C), s = 1/ratio: each s x s block of patches becomes one token.

    Output token (i, j) is row-major over the coarse grid; its channels are ordered [row offset a, col offset
    b, c], i.e. index a*s*C + b*C + c, which is what HF's view/permute sequence produces.
    """
    t, n2, c = x.shape
    s = round(1.0 / ratio)
    n = round(n2**0.5)
    if n * n != n2 or n % s:
        raise ValueError(f"pixel_shuffle needs a square grid with side divisible by {s}, got {n2} patches")
    x = x.view(t, n // s, s, n // s, s, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(t, (n // s) ** 2, s * s * c)


class VisionAdapterMLP(nn.Module):
    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.dropout = cfg.projector_dropout
        self.fc1 = nn.Linear(cfg.intermediate_size, cfg.projector_input_dim, bias=False)
        self.fc2 = nn.Linear(cfg.projector_output_dim, cfg.projector_output_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.dropout(F.gelu(self.fc1(x)), p=self.dropout, training=self.training)
        return F.gelu(self.fc2(x))  # Llama 4 applies GELU after fc2 as well


class VisionAdapter(nn.Module):
    """Pixel shuffle followed by the two-layer adapter MLP (HF: Llama4VisionPixelShuffleMLP)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.ratio = cfg.pixel_shuffle_ratio
        self.mlp = VisionAdapterMLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(pixel_shuffle(x, self.ratio))


class VisionModel(nn.Module):
    """The Llama 4 vision tower: tiles (T, C, img, img) -> features (T, N/s^2, projector_output_dim)."""

    def __init__(self, cfg: VisionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h = cfg.hidden_size
        self.patch_embedding = PatchEmbedding(cfg)
        self.class_embedding = nn.Parameter(torch.empty(h))
        self.positional_embedding_vlm = nn.Parameter(torch.empty(cfg.num_patches + 1, h))
        self.layernorm_pre = nn.LayerNorm(h)
        self.layernorm_post = nn.LayerNorm(h)
        self.model = VisionEncoder(cfg)
        self.vision_adapter = VisionAdapter(cfg)
        self._rope: dict[torch.device, torch.Tensor] = {}  # fp32 complex tables per device, never cast
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """transformers' init: Linear ~ N(0, initializer_range), zero biases, unit LayerNorms, and the
        class and positional embeddings ~ N(0, Cv^-1/2)."""
        std = self.cfg.initializer_range
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        scale = self.cfg.hidden_size**-0.5
        nn.init.normal_(self.class_embedding, std=scale)
        nn.init.normal_(self.positional_embedding_vlm, std=scale)

    def rope(self, device: torch.device) -> torch.Tensor:
        table = self._rope.get(device)
        if table is None:
            table = self._rope[device] = vision_rope_table(self.cfg, device)
        return table

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        c, img = self.cfg.num_channels, self.cfg.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (c, img, img):
            raise ValueError(
                f"pixel_values must be tiles of shape (num_tiles, {c}, {img}, {img}) "
                f"(vision.image_size={img}); got {tuple(pixel_values.shape)}. Split images into tiles "
                "with the Llama 4 image processor."
            )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        self.check_pixel_values(pixel_values)
        # The HF image processor emits bf16; compute in the weights' dtype (HF leaves that to the caller).
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.linear.weight.dtype))
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([x, cls], dim=1)  # CLS is appended LAST
        x = self.layernorm_pre(x + self.positional_embedding_vlm.to(x.dtype))
        x = self.model(x, self.rope(x.device))
        x = self.layernorm_post(x)[:, :-1]  # drop CLS
        return self.vision_adapter(x)


class MultiModalProjector(nn.Module):
    """linear_1: vision_output_dim -> text hidden size, no bias, no activation."""

    def __init__(self, cfg: VisionConfig, text_hidden_size: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(cfg.vision_output_dim, text_hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_1(x)


def merge_image_features(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor, image_token_index: int
) -> torch.Tensor:
    """Write image features into the embeddings at the `<|patch|>` positions, row-major over (batch, seq).

    `image_features` (any leading shape, last dim H) is consumed in order: tile by tile as given in
    pixel_values. Every other token (`<|image|>`, `<|image_start|>`, separators) keeps its text embedding.
    Returns a new tensor, so gradients flow to both the text embeddings and the vision tower.
    """
    h = inputs_embeds.shape[-1]
    feats = image_features.reshape(-1, image_features.shape[-1])
    if feats.shape[-1] != h:
        raise ValueError(f"image features have width {feats.shape[-1]} but the text model's is {h}: "
                         "project them with MultiModalProjector first")
    mask = input_ids == image_token_index
    n_tokens = int(mask.sum())
    if n_tokens != feats.shape[0]:
        raise ValueError(
            f"the prompt has {n_tokens} <|patch|> tokens (id {image_token_index}) but the images give "
            f"{feats.shape[0]} feature rows: each tile needs exactly tokens_per_tile <|patch|> tokens; build "
            "the prompt with the Llama 4 processor layout for the same tiles"
        )
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1), feats.to(inputs_embeds.dtype))


def processor_configs(cfg: VisionConfig) -> dict[str, dict]:
    """`preprocessor_config.json` and `processor_config.json` of a multimodal checkpoint (reference §4.4).

    transformers' `AutoProcessor` and vLLM build the Llama 4 image processor and processor from these: tiles
    of `image_size` pixels, rescale 1/255 then normalise with mean = std = 0.5, up to 16 tiles plus a global
    tile, and `(image_size/patch)^2 * ratio^2` `<|patch|>` tokens per tile. The type name is the legacy
    "Fast" one, which both transformers 5.24 and the older 5.x that vLLM pins resolve.
    """
    size = {"height": cfg.image_size, "width": cfg.image_size}
    preprocessor = {
        "image_processor_type": "Llama4ImageProcessorFast", "processor_class": "Llama4Processor",
        "do_convert_rgb": True, "do_resize": True, "size": size, "resample": 2,  # PIL bilinear
        "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "max_patches": 16, "resize_to_max_canvas": False,
    }
    processor = {
        "processor_class": "Llama4Processor", "patch_size": cfg.patch_size,
        "pixel_shuffle_ratio": cfg.pixel_shuffle_ratio, "fake_image_token": "<|image|>",
        "image_token": "<|image|>", "start_of_image_token": "<|image_start|>",
        "end_of_image_token": "<|image_end|>",
        "patch_token": "<|patch|>", "tile_x_separator_token": "<|tile_x_separator|>",
        "tile_y_separator_token": "<|tile_y_separator|>",
    }
    return {"preprocessor_config.json": preprocessor, "processor_config.json": processor}


def write_processor_configs(cfg: VisionConfig, out_dir: str | Path) -> None:
    """Write `processor_configs(cfg)` into a checkpoint directory."""
    for name, content in processor_configs(cfg).items():
        (Path(out_dir) / name).write_text(json.dumps(content, indent=2) + "\n")
