"""MetaP: per-layer init scales and AdamW lr multipliers that follow width (and depth) from a base shape.

Tune lr / init on a narrow proxy (the *base shape*), then train a wide model with the same numbers:

    from herd.model import metap
    metap.init_weights(model, base=proxy_cfg)                 # re-initialise with width-aware std
    groups = metap.param_groups(model, base=proxy_cfg, lr=3e-3, weight_decay=0.1, eps=1e-8)
    opt = torch.optim.AdamW(groups, betas=(0.9, 0.95))
    print(metap.describe(model, base=proxy_cfg))               # the rule applied to every parameter

Meta's Llama 4 announcement ("The Llama 4 herd", April 2025) names "MetaP": per-layer learning rates and
init scales that transfer across width, depth and batch size. It is not published; herd implements the
published theory it points to, for Adam:

* **Width: μP** (Yang et al. 2022, "Tensor Programs V", Table 3 for Adam; Everett et al. 2024, "Scaling
  Exponents Across Parameterizations and Optimizers"). With m = fan_in / fan_in_base per parameter (so
  experts, attention and MLP widths may scale differently):

  | role | params | init std | Adam lr | weight decay |
  |---|---|---|---|---|
  | embedding | embed_tokens, patch_embedding, class/positional emb. | σ_base | lr | 0 |
  | hidden | q/k/v/o, dense/shared/routed experts, vision, adapter | σ_base / √m | lr / m | wd·m |
  | output (readout) | lm_head, MoE router | σ_base / m | lr / m | wd·m |
  | vector | norm weights, biases | unchanged | lr | 0 |

  The router is a readout: a fixed number (E) of logits read from the width-H residual stream, so it
  follows the output rule and its logits stay O(1) at every width. Routed experts' fused tensors
  (E, H, 2I) / (E, I, H) are right-multiplied, so their per-expert fan-in is dim 1 (H resp. I); E is a
  batch dim, not a width. A parameter whose fan-in does not grow (the multimodal projector when only the
  text widens) gets m = 1, which is μP's input-layer rule. σ_base is the model's own default
  (`initializer_range`; Cv^-1/2 of the *base* tower for the vision class and positional embeddings), so at
  the base shape MetaP is exactly the transformers init.
* **Weight decay**: AdamW multiplies decay by the group lr. MetaP keeps lr x wd (the decay timescale)
  fixed per group, i.e. wd grows as the lr shrinks (Wang & Aitchison 2024, "How to set AdamW's weight
  decay as you scale model and dataset size"); norms, biases and embeddings are not decayed.
* **Adam epsilon** (Everett et al. 2024, §4): in μP the gradients of all but the readout shrink like
  1/width, so a fixed eps would swamp them in wide models; when `eps` is given, every non-output group
  gets eps x width_base/width.
* **Depth: depth-μP** (Yang et al. 2023, "Tensor Programs VI"; Bordelon et al. 2023, "Depthwise
  hyperparameter transfer in residual networks"): residual branches carry a multiplier sqrt(L_base/L) and
  Adam lrs inside the blocks scale by sqrt(L_base/L). herd folds the branch multiplier into the branch's
  last matrix (o_proj, down_proj, experts.down_proj, vision fc2) instead of a forward multiplier, so
  exported checkpoints stay plain Llama 4: that matrix's init std is x sqrt(L_base/L) and, Adam being
  scale-free, its lr x L_base/L in total. Applied only when the base has a different depth
  (`depth_scaling=False` turns it off).

Without a `base`, the base shape is the model's own shape scaled to width 256 (herd's tiny recipe, where
the default hyperparameters were tuned), at the same depth. `benchmarks/metap_coord_check.py` (and
`tests/model/test_metap_coord.py`) shows activations and updates stay flat across width and depth with
these rules and drift without them.

A tied lm_head is the embedding matrix and follows the embedding rule; μP's readout scaling would then need
a logit multiplier Llama 4 checkpoints cannot carry, so untie embeddings for width transfer (a warning says
so).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from herd.model.config import ModelConfig

DEFAULT_BASE_HIDDEN_SIZE = 256

Role = Literal["embedding", "hidden", "output", "vector"]


class BaseShape(BaseModel):
    """The widths (and depths) the hyperparameters were tuned at. Only ratios to the model's widths matter."""

    model_config = ConfigDict(extra="forbid")

    hidden: float = Field(gt=0, description="Text hidden_size H.")
    attn: float = Field(gt=0, description="num_attention_heads * head_dim (o_proj fan-in).")
    moe_inter: float = Field(gt=0, description="intermediate_size (routed / shared expert width).")
    mlp_inter: float = Field(gt=0, description="intermediate_size_mlp (dense MLP width).")
    layers: int = Field(gt=0, description="num_hidden_layers.")
    v_hidden: float | None = Field(None, gt=0, description="Vision hidden_size Cv.")
    v_inter: float | None = Field(None, gt=0, description="Vision intermediate_size (= Cv / ratio^2).")
    v_proj: float | None = Field(None, gt=0, description="Vision projector / output dim.")
    v_layers: int | None = Field(None, gt=0, description="Vision num_hidden_layers.")

    @classmethod
    def of(cls, cfg: ModelConfig) -> BaseShape:
        v = cfg.vision
        return cls(
            hidden=cfg.hidden_size, attn=cfg.num_attention_heads * cfg.head_dim,
            moe_inter=cfg.intermediate_size, mlp_inter=cfg.intermediate_size_mlp,
            layers=cfg.num_hidden_layers,
            v_hidden=v.hidden_size if v else None, v_inter=v.intermediate_size if v else None,
            v_proj=v.vision_output_dim if v else None, v_layers=v.num_hidden_layers if v else None,
        )

    @classmethod
    def scaled(cls, cfg: ModelConfig, hidden_size: float = DEFAULT_BASE_HIDDEN_SIZE) -> BaseShape:
        """cfg's shape with every width (text and vision) x hidden_size / cfg.hidden_size, same depth."""
        r = hidden_size / cfg.hidden_size
        s = cls.of(cfg)
        widths = {k: getattr(s, k) * r for k in ("hidden", "attn", "moe_inter", "mlp_inter", "v_hidden",
                                                   "v_inter", "v_proj") if getattr(s, k) is not None}
        return s.model_copy(update=widths)


def _base_shape(cfg: ModelConfig, base: ModelConfig | BaseShape | None) -> BaseShape:
    if base is None:
        return BaseShape.scaled(cfg)
    if isinstance(base, ModelConfig):
        return BaseShape.of(base)
    return base


@dataclass(frozen=True)
class ParamRule:
    """What MetaP does to one parameter."""

    name: str
    role: Role
    init_std: float | None  # None: keep the module's own init (vectors)
    lr_mult: float
    wd_mult: float  # multiplies weight_decay (0: not decayed)
    eps_mult: float


def _width_key(name: str) -> tuple[str, str]:
    """(tower, key of the width that is this parameter's fan-in). tower is 'text' or 'vision'."""
    if "multi_modal_projector." in name:
        return "vision", "v_proj"
    if "vision_model." in name:
        if "vision_adapter.mlp.fc2" in name:
            return "vision", "v_proj"
        if "vision_adapter.mlp.fc1" in name or ".mlp.fc2." in name:
            return "vision", "v_inter"  # adapter fc1 reads the pixel-shuffled s^2*Cv = intermediate_size
        return "vision", "v_hidden"
    if name.endswith("self_attn.o_proj.weight"):
        return "text", "attn"
    if "experts.down_proj" in name or "shared_expert.down_proj" in name:
        return "text", "moe_inter"
    if name.endswith("down_proj.weight"):
        return "text", "mlp_inter"
    return "text", "hidden"


def _role(name: str, p: torch.Tensor) -> Role:
    leaf = name.rsplit(".", 1)[-1]
    if name.endswith(("embed_tokens.weight", "patch_embedding.linear.weight")) or leaf in (
        "class_embedding", "positional_embedding_vlm"
    ):
        return "embedding"
    if p.ndim < 2:
        return "vector"
    if name.endswith(("lm_head.weight", "router.weight")):
        return "output"
    return "hidden"


def _is_branch_output(name: str) -> bool:
    """Last matrix (and bias) of a residual branch: where depth-μP's branch multiplier is folded in."""
    if ".layers." not in name:
        return False
    return name.endswith(("self_attn.o_proj.weight", "self_attn.o_proj.bias", "down_proj.weight", "down_proj",
                          "mlp.fc2.weight", "mlp.fc2.bias")) and "vision_adapter" not in name


def _widths_of(cfg: ModelConfig) -> BaseShape:
    return BaseShape.of(cfg)


def rules(
    model: nn.Module,
    cfg: ModelConfig | None = None,
    base: ModelConfig | BaseShape | None = None,
    *,
    depth_scaling: bool = True,
) -> list[ParamRule]:
    """The MetaP rule of every trainable parameter of `model` (a herd Llama4, or any module with HF names)."""
    if cfg is None:  # DDP / torch.compile wrappers keep the herd model under .module / ._orig_mod
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        cfg = getattr(model, "config", None) or getattr(inner, "config", None)
    if not isinstance(cfg, ModelConfig):
        raise TypeError("metap needs the model's ModelConfig: pass cfg=... or a model with .config")
    b, w = _base_shape(cfg, base), _widths_of(cfg)
    sigmas = {"text": cfg.initializer_range, "vision": cfg.vision.initializer_range if cfg.vision else 0.0}
    tied = cfg.tie_word_embeddings
    if tied and b.hidden != w.hidden:
        warnings.warn(
            "metap: tie_word_embeddings=True makes lm_head the embedding matrix, which cannot get μP's "
            "readout scaling without a logit multiplier; logits will grow with width. Set "
            "tie_word_embeddings=False for width transfer.", stacklevel=2,
        )
    out: list[ParamRule] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        role = _role(name, p)
        tower, key = _width_key(name)
        width, base_width = getattr(w, key), getattr(b, key)
        if base_width is None:  # base without a vision tower: keep the tower at its own shape
            base_width = width
        if role in ("hidden", "output"):
            fan_in = p.shape[1] if p.ndim == 3 else p.shape[-1]  # (E, in, out) experts; (out, in) Linear
            if fan_in != width:
                raise RuntimeError(
                    f"metap: {name} has fan-in {fan_in} but its rule reads width {key}={width:g}; the "
                    "parameter "
                    "naming does not follow HF Llama 4 and herd/model/metap.py's table needs updating"
                )
        m = width / base_width
        if tower == "text":
            depth, base_depth, hidden_w, hidden_b = w.layers, b.layers, w.hidden, b.hidden
        else:
            depth, base_depth = w.v_layers, b.v_layers or w.v_layers
            hidden_w, hidden_b = w.v_hidden, b.v_hidden or w.v_hidden
        d = (base_depth / depth) if (depth_scaling and depth and base_depth and ".layers." in name) else 1.0
        eps_mult = 1.0 if role == "output" else hidden_b / hidden_w
        sigma = sigmas[tower]
        branch = _is_branch_output(name)
        lr_depth = math.sqrt(d) * (math.sqrt(d) if branch else 1.0)
        init_depth = math.sqrt(d) if branch else 1.0
        if role == "embedding":
            leaf = name.rsplit(".", 1)[-1]
            vision_pos = leaf in ("class_embedding", "positional_embedding_vlm")
            std = (b.v_hidden or w.v_hidden) ** -0.5 if vision_pos else sigma
            out.append(ParamRule(name, role, std, 1.0, 0.0, eps_mult))
        elif role == "vector":
            out.append(ParamRule(name, role, None, lr_depth, 0.0, eps_mult))
        elif role == "hidden":
            lr_mult = lr_depth / m
            std = sigma / math.sqrt(m) * init_depth
            out.append(ParamRule(name, role, std, lr_mult, 1.0 / lr_mult, eps_mult))
        else:  # output
            out.append(ParamRule(name, role, sigma / m, 1.0 / m, m, eps_mult))
    return out


@torch.no_grad()
def init_weights(
    model: nn.Module,
    cfg: ModelConfig | None = None,
    base: ModelConfig | BaseShape | None = None,
    *,
    depth_scaling: bool = True,
    generator: torch.Generator | None = None,
) -> None:
    """Re-initialise every matrix and embedding of `model` with its MetaP std (norms and biases stay)."""
    params = dict(model.named_parameters())
    for r in rules(model, cfg, base, depth_scaling=depth_scaling):
        if r.init_std is not None:
            params[r.name].normal_(0.0, r.init_std, generator=generator)
    for module in model.modules():  # transformers zeroes the padding row; keep that after re-init
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()


def param_groups(
    model: nn.Module,
    cfg: ModelConfig | None = None,
    base: ModelConfig | BaseShape | None = None,
    *,
    lr: float,
    weight_decay: float,
    eps: float | None = None,
    depth_scaling: bool = True,
) -> list[dict[str, Any]]:
    """AdamW param groups: one per distinct (lr, weight decay, eps) multiplier set, each with its own `lr`.

    Schedulers (LambdaLR) scale every group's lr by one factor, so the multipliers hold through warmup/decay.
    Each group also carries `role` and `lr_mult` for logging.
    """
    params = dict(model.named_parameters())
    buckets: dict[tuple[str, float, float, float], list[nn.Parameter]] = {}
    for r in rules(model, cfg, base, depth_scaling=depth_scaling):
        key = (r.role, round(r.lr_mult, 12), round(r.wd_mult, 12), round(r.eps_mult, 12))
        buckets.setdefault(key, []).append(params[r.name])
    groups = []
    for (role, lr_mult, wd_mult, eps_mult), ps in buckets.items():
        g: dict[str, Any] = {"params": ps, "lr": lr * lr_mult, "weight_decay": weight_decay * wd_mult,
                             "role": role, "lr_mult": lr_mult}
        if eps is not None:
            g["eps"] = eps * eps_mult
        groups.append(g)
    return groups


def describe(
    model: nn.Module,
    cfg: ModelConfig | None = None,
    base: ModelConfig | BaseShape | None = None,
    *,
    depth_scaling: bool = True,
) -> str:
    """A markdown table of the rule applied to every parameter (for logs and docs)."""
    lines = ["| parameter | role | init std | lr x | wd x | eps x |", "|---|---|---|---|---|---|"]
    for r in rules(model, cfg, base, depth_scaling=depth_scaling):
        std = "keep" if r.init_std is None else f"{r.init_std:.3g}"
        mults = f"{r.lr_mult:.3g} | {r.wd_mult:.3g} | {r.eps_mult:.3g}"
        lines.append(f"| {r.name} | {r.role} | {std} | {mults} |")
    return "\n".join(lines)


# ---- coordinate check (Yang et al. 2022, §D.1): the empirical test that a parametrization transfers --------
def coord_check_config(width: int, *, head_dim: int = 16, layers: int = 2, vocab: int = 256) -> ModelConfig:
    """A small Llama 4 whose widths all scale with `width` (heads grow, head_dim fixed, as μP prescribes)."""
    heads = max(width // head_dim, 2)
    return ModelConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        num_key_value_heads=heads // 2, head_dim=head_dim, intermediate_size=2 * width,
        intermediate_size_mlp=4 * width, num_local_experts=4, interleave_moe_layer_step=2,
        attention_chunk_size=None, router_balance="none", pad_token_id=None,
    )


def coord_check(
    widths: list[int],
    *,
    use_metap: bool,
    base_width: int | None = None,
    steps: int = 4,
    lr: float = 1e-2,
    batch: int = 8,
    seq_len: int = 32,
    seeds: int = 1,
    layers: int = 2,
) -> dict[str, list[float]]:
    """Train each width for `steps` AdamW steps on the same token batch and measure, per module output:

    `<module>.act`   RMS of the output after training, and
    `<module>.delta` RMS of (output after training - output at init): the size of the learned update.

    Returns {series: [value per width]} averaged over seeds. With MetaP (base = the narrowest width) every
    series is flat in width; with the standard parametrization (transformers' constant-std init, one
    global lr) the updates grow with width (≈ linearly for the logits).
    """
    from herd.model.decoder import Llama4

    base = coord_check_config(base_width or min(widths), layers=layers)
    result: dict[str, list[float]] = {}
    for width in widths:
        cfg = coord_check_config(width, layers=layers)
        stats = _averaged(Llama4, cfg, base, use_metap, True, steps, lr, batch, seq_len, seeds)
        for name, value in stats.items():
            result.setdefault(name, []).append(value)
    return result


def depth_check(
    depths: list[int],
    *,
    depth_scaling: bool,
    width: int = 128,
    steps: int = 4,
    lr: float = 1e-2,
    batch: int = 8,
    seq_len: int = 32,
    seeds: int = 1,
) -> dict[str, list[float]]:
    """`coord_check` over depth at a fixed width, MetaP on, with or without depth-μP (base = the shallowest).

    Series: the logits and the last layer's output (`last.out`)."""
    from herd.model.decoder import Llama4

    base = coord_check_config(width, layers=min(depths))
    result: dict[str, list[float]] = {}
    for depth in depths:
        cfg = coord_check_config(width, layers=depth)
        stats = _averaged(Llama4, cfg, base, True, depth_scaling, steps, lr, batch, seq_len, seeds)
        for name, value in stats.items():
            if name.startswith(("logits.", f"layer{depth - 1}.out.")):
                result.setdefault(name.replace(f"layer{depth - 1}", "last"), []).append(value)
    return result


def _averaged(model_cls: type[nn.Module], cfg: ModelConfig, base: ModelConfig, use_metap: bool,
              depth_scaling: bool, steps: int, lr: float, batch: int, seq_len: int, seeds: int
              ) -> dict[str, float]:
    sums: dict[str, float] = {}
    for seed in range(seeds):
        stats = _coord_run(model_cls, cfg, base, use_metap, depth_scaling, steps, lr, batch, seq_len, seed)
        for name, value in stats.items():
            sums[name] = sums.get(name, 0.0) + value / seeds
    return sums


def _coord_run(model_cls: type[nn.Module], cfg: ModelConfig, base: ModelConfig, use_metap: bool,
               depth_scaling: bool, steps: int, lr: float, batch: int, seq_len: int, seed: int
               ) -> dict[str, float]:
    torch.manual_seed(seed)
    model = model_cls(cfg)
    if use_metap:
        init_weights(model, base=base, depth_scaling=depth_scaling)
        opt = torch.optim.AdamW(param_groups(model, base=base, lr=lr, weight_decay=0.0, eps=1e-8,
                                             depth_scaling=depth_scaling))
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0, eps=1e-8)
    gen = torch.Generator().manual_seed(1234 + seed)  # the same data at every width
    ids = torch.randint(0, cfg.vocab_size, (batch, seq_len + 1), generator=gen)

    watched: dict[str, nn.Module] = {"embed": model.model.embed_tokens, "logits": model.lm_head}
    for i, layer in enumerate(model.model.layers):
        watched[f"layer{i}.attn"] = layer.self_attn
        watched[f"layer{i}.ffn"] = layer.feed_forward
        watched[f"layer{i}.out"] = layer
    acts: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def fn(_m: nn.Module, _inp: Any, out: Any) -> None:
            acts[name] = (out[0] if isinstance(out, tuple) else out).detach().float()
        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in watched.items()]
    with torch.no_grad():
        model(ids[:, :-1])
    init = dict(acts)
    for _ in range(steps):
        out = model(ids[:, :-1])
        loss = nn.functional.cross_entropy(out.logits.flatten(0, 1), ids[:, 1:].flatten()) + out.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        model(ids[:, :-1])
    for h in handles:
        h.remove()
    stats: dict[str, float] = {}
    for name in watched:
        stats[f"{name}.act"] = acts[name].pow(2).mean().sqrt().item()
        stats[f"{name}.delta"] = (acts[name] - init[name]).pow(2).mean().sqrt().item()
    return stats


def width_slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width): 0 is flat, 1 grows linearly with width."""
    xs = [math.log(w) for w in widths]
    ys = [math.log(max(v, 1e-30)) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
