"""Training plots from the metrics history the driver collected: the loss curve and the MoE expert load.

    paths = write_plots(history, out_dir)   # {"loss_curve": .../loss_curve.png, "expert_load": ...}

Files only: a flow step attaches them to its MLflow run through its step context (only the driver writes MLflow).
"""

from __future__ import annotations

import re
from pathlib import Path

_LOAD = re.compile(r"^moe/layer(\w+)/load_e(\d+)$")


def write_plots(history: list[tuple[int, dict[str, float]]], out_dir: str | Path, title: str = "") -> dict[str, Path]:
    """Write loss_curve.png (train loss, CE and held-out loss vs step) and expert_load.png (each MoE layer's
    per-expert share of routed tokens vs step; a flat 1/E line is perfect balance). Returns what was written."""
    import matplotlib

    matplotlib.use("Agg")  # no display on workers / CI
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if not history:
        return written
    steps = [s for s, _ in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key, label in (("loss", "train loss"), ("ce", "train CE"), ("eval/loss", "held-out CE"),
                       ("teacher_ce", "teacher CE")):
        pts = [(s, m[key]) for s, m in history if key in m]
        if pts and not (key == "ce" and all(m.get("ce") == m.get("loss") for _, m in history)):
            ax.plot(*zip(*pts), marker="o" if key == "eval/loss" else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("nats / token")
    ax.set_title(f"{title} loss".strip())
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    written["loss_curve"] = out / "loss_curve.png"
    fig.savefig(written["loss_curve"], dpi=110)
    plt.close(fig)

    layers: dict[str, dict[int, list[float]]] = {}
    for _, m in history:
        for k, v in m.items():
            hit = _LOAD.match(k)
            if hit:
                layers.setdefault(hit.group(1), {}).setdefault(int(hit.group(2)), []).append(v)
    if layers:
        names = sorted(layers, key=lambda n: int(n) if n.isdigit() else n)
        fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.4), squeeze=False)
        for ax, name in zip(axes[0], names):
            experts = layers[name]
            for e in sorted(experts):
                ax.plot(steps[-len(experts[e]):], experts[e], label=f"expert {e}")
            ax.axhline(1 / len(experts), color="k", ls="--", lw=0.8)
            ax.set_title(f"MoE layer {name}")
            ax.set_xlabel("step")
            ax.set_ylabel("share of routed tokens")
            ax.set_ylim(0, 1)
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{title} expert load".strip())
        fig.tight_layout()
        written["expert_load"] = out / "expert_load.png"
        fig.savefig(written["expert_load"], dpi=110)
        plt.close(fig)
    return written

