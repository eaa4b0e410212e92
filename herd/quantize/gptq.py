"""GPTQ (Frantar et al. 2022, arXiv:2210.17323): quantize a Linear's columns one at a time and push each column's
rounding error onto the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs.

    H = collect_hessians(model, batches)["model.layers.1.feed_forward.experts.0.gate_proj"]   # (in, in)
    qw = gptq(w, H, bits=4, group_size=32)            # QuantizedWeight, qw.error = ||(W - Ŵ) X||² / rows
    layer_error(w, rtn(w, 4, 32).dequantize(), H)      # the same metric for RTN

The Hessian is H = 2/n Σ x xᵀ over the calibration tokens that reach the Linear (for a routed expert: only the
tokens routed to it, already scaled by the router score, which multiplies the expert input in Llama 4). Details
follow llm-compressor's ``gptq_quantize.py``: dampening = ``dampening · mean(diag H)``, Cholesky of H⁻¹ (upper),
lazy batch updates in blocks of 128 columns, dead inputs (diag 0) zeroed. Group scales are computed from the
error-updated weights when a group starts; with ``act_order`` the columns go by decreasing diag(H) and the
scales are fixed up front per contiguous group (llm-compressor's ``actorder="static"``), so the export needs no
``g_idx`` and torch's packed kernels can run it.

Hessians are collected in one pass of the unquantized model over all layers (not layer by layer on the partly
quantized model): on the tiny and small models this loses little and keeps calibration one forward per batch.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from herd.quantize.rtn import QuantizedWeight, qrange, scales

BLOCK = 128


def layer_error(w: torch.Tensor, w_hat: torch.Tensor, H: torch.Tensor) -> float:
    """||(W - Ŵ) X||² per output row, through the Hessian: tr(D H Dᵀ) / rows (D = W - Ŵ); the quantity GPTQ
    minimises and llm-compressor logs as ``GPTQ | METRIC - error``."""
    D = (w.float() - w_hat.float())
    return float(torch.einsum("nk,kl,nl->", D, H.float(), D) / w.shape[0])


@torch.no_grad()
def gptq(
    w: torch.Tensor,
    H: torch.Tensor,
    bits: int,
    group_size: int = 0,
    *,
    act_order: bool = False,
    dampening: float = 0.01,
    scale_dtype: torch.dtype = torch.float32,
) -> QuantizedWeight:
    """GPTQ-quantize the (out, in) weight ``w`` given its input Hessian ``H`` (in, in)."""
    N, K = w.shape
    if H.shape != (K, K):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match the weight's input dim {K}")
    G = group_size or K
    if K % G or (group_size and BLOCK % G):
        raise ValueError(f"group_size {group_size} must divide the input dim {K} and the GPTQ block {BLOCK}")
    qmin, qmax = qrange(bits)
    W = w.float().clone()
    H = H.float().clone()
    dead = torch.diag(H) == 0  # inputs no calibration token exercised: nothing to compensate
    H[dead, dead] = 1
    W[:, dead] = 0
    # static scales: act_order or per channel (one group spans all columns, so it is known up front)
    S = scales(W, bits, group_size, scale_dtype).float() if act_order or not group_size else None
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else None
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
    group_of = torch.arange(K) // G
    if perm is not None:
        group_of = group_of[perm]

    H += dampening * torch.mean(torch.diag(H)) * torch.eye(K)
    # upper Cholesky factor of H^-1: row i holds how column i's error spreads over the later columns
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros(N, K, dtype=torch.int8)
    S_live = torch.zeros(N, K // G) if S is None else S
    for i1 in range(0, K, BLOCK):
        i2 = min(i1 + BLOCK, K)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if S is None and col % G == 0:  # a new group starts: its scale from the error-updated weights
                S_live[:, col // G] = scales(W1[:, i : i + G], bits, 0, scale_dtype).float()[:, 0]
            s = S_live[:, int(group_of[col])]
            wcol, d = W1[:, i], Hinv1[i, i]
            q = torch.round(wcol / s).clamp(qmin, qmax)
            Q[:, col] = q.to(torch.int8)
            err = (wcol - q * s) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]  # the block's accumulated error reaches the later columns at once
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    qw = QuantizedWeight(Q, S_live.to(scale_dtype), bits, group_size)
    return qw


class _Accumulator:
    """Running Σ x xᵀ and token counts per module name."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, name: str, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        if x.shape[0] == 0:
            return
        xtx = x.T @ x
        if name in self.sums:
            self.sums[name] += xtx
            self.counts[name] += x.shape[0]
        else:
            self.sums[name], self.counts[name] = xtx, x.shape[0]

    def hessians(self) -> dict[str, torch.Tensor]:
        return {k: 2 * v / self.counts[k] for k, v in self.sums.items()}


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[torch.Tensor], targets: Iterable[str]) -> dict[str, torch.Tensor]:
    """Input Hessians of the quantization ``targets`` (names from ``herd.quantize.targets.target_names``) over
    calibration ``batches`` of token ids (B, T). Routed experts get only the tokens routed to them."""
    from herd.model.moe import Experts  # herd.model imports torch; fine here

    targets = set(targets)
    acc = _Accumulator()
    handles = []
    for name, mod in model.named_modules():
        if isinstance(mod, nn.Linear) and name in targets:
            handles.append(mod.register_forward_pre_hook(lambda m, args, n=name: acc.add(n, args[0])))
        elif isinstance(mod, Experts) and any(t.startswith(name + ".") for t in targets):
            def hook(m: Experts, args: tuple, n: str = name) -> None:
                x_sorted, counts = args
                I = m.down_proj.shape[1]
                for e, xe in enumerate(x_sorted.split(counts)):
                    if xe.shape[0] == 0:
                        continue
                    acc.add(f"{n}.{e}.gate_proj", xe)  # gate and up read the same input
                    gu = xe.float() @ m.gate_up_proj[e].float()
                    acc.add(f"{n}.{e}.down_proj", F.silu(gu[:, :I]) * gu[:, I:])
            handles.append(mod.register_forward_pre_hook(hook))
    try:
        was_training = model.training
        model.eval()
        for ids in batches:
            model(ids)
        model.train(was_training)
    finally:
        for h in handles:
            h.remove()
    H = acc.hessians()
    for k in list(H):
        if k.endswith(".gate_proj") and ".experts." in k:
            H[k[: -len("gate_proj")] + "up_proj"] = H[k]
    return H


__all__ = ["collect_hessians", "gptq", "layer_error"]
