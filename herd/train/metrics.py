"""Training metrics computed in the workers: MoE expert load / router entropy, and the matmul peak for MFU.

MFU = achieved model FLOP/s / peak FLOP/s. Achieved = (3 x forward FLOPs per token of the trained model
[+ 1 x the frozen teacher's forward]) x tokens/s, with forward FLOPs from ModelConfig.flops_per_token (2 per
multiply-add, active parameters only, attention included; Kaplan et al. 2020's 6N rule plus attention). Peak
is measured, not a datasheet number: the best of a few large matmuls in the training dtype on this worker's
threads, so the ratio reflects what this machine can do.
"""

from __future__ import annotations

import time
from typing import Any

import torch


def matmul_peak_flops(dtype: torch.dtype, device: torch.device, n: int = 1024, iters: int = 6) -> float:
    """Measured peak FLOP/s of an n x n x n matmul (the best of `iters`)."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        (a @ b).sum().item()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, dict) else getattr(obj, key)


def router_layers(router_stats: Any) -> list[tuple[str, Any]]:
    """Normalize the model's router_stats (a list or a dict keyed by layer) to [(layer name, stats)]."""
    if router_stats is None:
        return []
    if isinstance(router_stats, dict):
        return [(str(k), v) for k, v in router_stats.items()]
    return [(str(getattr(s, "layer", i)), s) for i, s in enumerate(router_stats)]  # the decoder layer index


class ExpertLoad:
    """Accumulates tokens per expert and router entropy per MoE layer over a logging window."""

    def __init__(self) -> None:
        self.counts: dict[str, torch.Tensor] = {}
        self.entropy: dict[str, float] = {}
        self.n = 0

    def add(self, router_stats: Any) -> None:
        layers = router_layers(router_stats)
        if not layers:
            return
        self.n += 1
        for name, s in layers:
            c = _get(s, "tokens_per_expert").detach().float().cpu()
            self.counts[name] = self.counts[name] + c if name in self.counts else c.clone()
            self.entropy[name] = self.entropy.get(name, 0.0) + float(_get(s, "entropy"))

    def summary(self) -> dict[str, float]:
        """Per layer: each expert's share of the routed tokens, load imbalance (max/mean) and router entropy."""
        out: dict[str, float] = {}
        for name, c in self.counts.items():
            share = c / c.sum().clamp_min(1.0)
            for e, v in enumerate(share.tolist()):
                out[f"moe/layer{name}/load_e{e}"] = v
            out[f"moe/layer{name}/imbalance"] = float(share.max() * len(share))
            out[f"moe/layer{name}/entropy"] = self.entropy[name] / max(self.n, 1)
        return out

    def reset(self) -> None:
        self.counts, self.entropy, self.n = {}, {}, 0


# MLflow's run page draws one chart per metric, grouped into sections by the key's part before its last "/"; sections are
# sorted by name and the ungrouped "Model metrics" section comes last. With the MoE keys as `moe/layer1/...`
# the loss, CE and lr charts came after twelve expert-load charts. Shown in MLflow, the MoE keys are dotted
# (`moe.layer1.load_e0`): they sort after ce, loss and lr in "Model metrics", and the held-out loss (`eval/`)
# comes first. `step` and `tokens` are the x axes, not charts (straight lines).
NOT_CHARTS = ("step", "tokens")


def for_mlflow(metrics: dict[str, float]) -> dict[str, float]:
    """The training metrics as MLflow shows them: x axes dropped, MoE keys dotted, main charts first."""
    out = {k.replace("/", ".") if k.startswith("moe/") else k: v for k, v in metrics.items() if k not in NOT_CHARTS}
    first = [k for k in ("eval/loss", "loss", "ce", "lr") if k in out]
    return {**{k: out[k] for k in first}, **{k: v for k, v in sorted(out.items()) if k not in first}}
