"""AdamW with MetaP parameter groups and the learning-rate schedules (linear warmup, then cosine or WSD).

    opt = build_optimizer(model, cfg.optim)                 # param groups from herd.model.metap when present
    sched = build_scheduler(opt, cfg.schedule, cfg.steps)    # a LambdaLR: state_dict / load_state_dict

The schedule multiplies each group's own lr (MetaP sets per-group lr multipliers, Llama 4 "MetaP"), so one
peak lr transfers across widths and depths.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from herd.train.config import OptimConfig, ScheduleConfig


def lr_factor(step: int, cfg: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at optimizer step `step` (0-based)."""
    w = cfg.warmup_steps
    if w and step < w:
        return (step + 1) / w  # reach the peak at the end of warmup, never lr = 0 at step 0
    lo = cfg.min_lr_ratio
    if cfg.kind == "cosine":
        t = min(max((step - w) / max(total_steps - w, 1), 0.0), 1.0)
        return lo + (1 - lo) * 0.5 * (1 + math.cos(math.pi * t))
    # WSD (Hu et al. 2024, MiniCPM): hold the peak, then decay linearly over the last decay_fraction of steps;
    # the stable phase's checkpoints can be continued without re-warming.
    decay_steps = max(round(cfg.decay_fraction * total_steps), 1)
    start = total_steps - decay_steps
    if step < start:
        return 1.0
    t = min((step - start + 1) / decay_steps, 1.0)
    return 1.0 - (1.0 - lo) * t


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """MetaP groups from herd.model.metap when the model provides them, else the standard decay split."""
    if hasattr(model, "config"):  # a herd Llama4 (bare or wrapped): MetaP per-layer lr / wd / eps multipliers
        from herd.model.metap import param_groups as metap_groups

        groups = metap_groups(model, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)
        return [dict(g) for g in groups]
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        # norms, biases and embeddings are not decayed (decay would pull their scale, not their direction)
        (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
    return [{"params": decay, "weight_decay": cfg.weight_decay, "lr": cfg.lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": cfg.lr}]


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    groups = [g for g in param_groups(model, cfg) if g["params"]]
    for g in groups:
        g.setdefault("lr", cfg.lr)
        g["initial_lr"] = g["lr"]
    # foreach kernels: fewer, larger ops (the fused kernel is CUDA-only in practice)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, foreach=True)


def build_scheduler(opt: torch.optim.Optimizer, cfg: ScheduleConfig, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg, total_steps))
