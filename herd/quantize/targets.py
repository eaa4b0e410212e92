"""Which weights of a herd Llama 4 are quantized, under the per-expert names vLLM and transformers load.

    names = target_names(model, ignore=QuantizeConfig().ignore)   # dense MLPs, shared experts, routed experts
    w = target_weight(model, "model.layers.1.feed_forward.experts.2.up_proj")   # (out, in), unfused
    qweights = quantize_weights(model, scheme, hessians)          # {name: QuantizedWeight}

Quantized: the routed experts (unfused from herd's (E, H, 2I) ``gate_up_proj`` / (E, I, H) ``down_proj`` into
per-expert (out, in) Linears ``experts.{e}.{gate,up,down}_proj``, the layout vLLM's Llama 4 per-expert loader and
transformers' SequentialLlama4TextExperts expect), the shared expert and the dense MLPs. Kept in high precision:
attention (vLLM permutes q/k rows on load but not packed weights), router, embeddings, lm_head, vision tower.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

from herd.quantize.config import QuantScheme
from herd.quantize.rtn import QuantizedWeight, fp8, rtn

_PROJ = ("gate_proj", "up_proj", "down_proj")


def matches(name: str, patterns: Iterable[str]) -> bool:
    """compressed-tensors' rule: an exact module name, or ``re:<regex>`` matched at the start of the name."""
    for p in patterns:
        if p.startswith("re:"):
            if re.match(p[3:], name):
                return True
        elif p == name:
            return True
    return False


def _experts(model: nn.Module) -> dict[str, nn.Module]:
    from herd.model.moe import Experts

    return {n: m for n, m in model.named_modules() if isinstance(m, Experts)}


def target_names(model: nn.Module, ignore: Iterable[str] = ()) -> list[str]:
    """Names (herd/HF text names) of the Linears to quantize, in model order; experts unfused per expert."""
    ignore = list(ignore)
    names: list[str] = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and ".feed_forward." in name and not name.endswith(".router"):
            names.append(name)
    for name, mod in _experts(model).items():
        names.extend(f"{name}.{e}.{p}" for e in range(mod.gate_up_proj.shape[0]) for p in _PROJ)
    return [n for n in names if not matches(n, ignore)]


def high_precision_linears(model: nn.Module, targets: Iterable[str]) -> list[str]:
    """Every nn.Linear that is not a target (attention, router, lm_head, vision tower): the export's ``ignore``
    list, explicit names as compressed-tensors writes them (a ``targets: [Linear]`` scheme would match them)."""
    targets = set(targets)
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in targets]


def target_weight(model: nn.Module, name: str) -> torch.Tensor:
    """The (out, in) weight of target ``name``; routed experts are sliced out of the fused parameters."""
    head, _, proj = name.rpartition(".")
    parent, _, idx = head.rpartition(".")
    experts = _experts(model)
    if parent in experts and idx.isdigit():
        ex, e = experts[parent], int(idx)
        inter = ex.down_proj.shape[1]
        if proj == "gate_proj":
            return ex.gate_up_proj[e][:, :inter].T
        if proj == "up_proj":
            return ex.gate_up_proj[e][:, inter:].T
        return ex.down_proj[e].T
    return model.get_submodule(name).weight


def quantize_one(w: torch.Tensor, scheme: QuantScheme, H: torch.Tensor | None = None,
                 scale_dtype: torch.dtype = torch.float32) -> QuantizedWeight:
    """One weight by ``scheme``: RTN, GPTQ (needs its Hessian ``H``) or fp8. ``error`` is filled when H is given."""
    from herd.quantize.gptq import gptq, layer_error

    if scheme.scheme == "fp8":
        qw = fp8(w, scale_dtype)
    elif scheme.method == "gptq":
        if H is None:
            raise ValueError("gptq needs the layer's Hessian: run collect_hessians on calibration data first")
        qw = gptq(w, H, scheme.bits, scheme.group_size, act_order=scheme.act_order, dampening=scheme.dampening,
                  scale_dtype=scale_dtype)
    else:
        qw = rtn(w, scheme.bits, scheme.group_size, scale_dtype)
    if H is not None:
        qw.error = layer_error(w, qw.dequantize(), H)
    return qw


@torch.no_grad()
def quantize_weights(model: nn.Module, scheme: QuantScheme, hessians: dict[str, torch.Tensor] | None = None,
                     ignore: Iterable[str] = (), scale_dtype: torch.dtype = torch.float32) -> dict[str, QuantizedWeight]:
    """Quantize every target of ``model`` (not modified). A GPTQ target no calibration token reached (an expert
    the router never chose) falls back to RTN, which is what GPTQ reduces to with no data."""
    out: dict[str, QuantizedWeight] = {}
    hessians = hessians or {}
    for name in target_names(model, ignore):
        w = target_weight(model, name).detach().float()
        H = hessians.get(name)
        if scheme.method == "gptq" and H is None:
            out[name] = rtn(w, scheme.bits, scheme.group_size, scale_dtype)
            continue
        out[name] = quantize_one(w, scheme, H, scale_dtype)
    return out


__all__ = ["high_precision_linears", "matches", "quantize_one", "quantize_weights", "target_names", "target_weight"]
