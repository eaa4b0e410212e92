"""Needle-in-a-haystack suite: a grid of context length x needle depth, accuracy per cell, and the heatmap.

    r = evaluate_needle(lm, read_items(evalset, "needle"))
    r.extra["grid"]                       # {"lengths": [...], "depths": [...], "acc": [[...]], "lo": ..., "hi": ...}
    heatmap(r, "niah.png", seq_len=256)   # the standard NIAH picture: depth (rows) x length (columns)

A needle counts as found when its six-digit code appears in the greedy answer (RULER's string match; no judge
model). Lengths past the training ``seq_len`` (2x, 4x, 8x) are where iRoPE's length generalization shows:
chunked RoPE layers see at most one chunk, the NoPE layers see everything with temperature-tuned attention.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from herd.eval.lm import HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import wilson


def evaluate_needle(lm: HerdLM, items: Sequence[dict[str, Any]], *, max_new_tokens: int = 8,
                    confidence: float = 0.95) -> SuiteResult:
    t0 = time.perf_counter()
    gens = lm.generate(lm.prompt_ids(items, chat=False), max_new_tokens=max_new_tokens)
    samples = []
    for it, g in zip(items, gens, strict=True):
        pred = lm.decode(g).strip()
        samples.append({"id": it["id"], "context_length": it["context_length"], "depth": it["depth"],
                        "n_tokens": it.get("n_tokens"), "answer": it["answer"], "prediction": pred,
                        "correct": int(it["answer"] in pred)})
    lengths = sorted({s["context_length"] for s in samples})
    depths = sorted({s["depth"] for s in samples})
    acc = [[0.0] * len(lengths) for _ in depths]
    lo, hi = [row[:] for row in acc], [row[:] for row in acc]
    metrics = {"acc": wilson(sum(s["correct"] for s in samples), len(samples), confidence)}
    for li, n in enumerate(lengths):
        col = [s for s in samples if s["context_length"] == n]
        metrics[f"len_{n}"] = wilson(sum(s["correct"] for s in col), len(col), confidence)
        for di, d in enumerate(depths):
            cell = [s["correct"] for s in col if s["depth"] == d]
            if cell:
                sc = wilson(sum(cell), len(cell), confidence)
                acc[di][li], lo[di][li], hi[di][li] = sc.value, sc.lo, sc.hi
    grid = {"lengths": lengths, "depths": depths, "acc": acc, "lo": lo, "hi": hi,
            "per_cell": len(samples) // max(1, len(lengths) * len(depths))}
    return SuiteResult("needle", metrics, primary="acc", samples=samples, seconds=time.perf_counter() - t0,
                       extra={"grid": grid})


def heatmap(result: SuiteResult, path: str | Path, *, seq_len: int | None = None, title: str = "") -> Path:
    """The NIAH heatmap PNG: needle depth (rows) x context length (columns), cell = accuracy (+ its CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    g = result.extra["grid"]
    acc = np.array(g["acc"])
    fig, ax = plt.subplots(figsize=(1.3 * len(g["lengths"]) + 2.5, 0.55 * len(g["depths"]) + 2))
    im = ax.imshow(acc, cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(g["lengths"])),
                  [f"{n}" + (f"\n{n / seq_len:g}x" if seq_len else "") for n in g["lengths"]])
    ax.set_yticks(range(len(g["depths"])), [f"{d:.0%}" for d in g["depths"]])
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, f"{v:.2f}\n[{g['lo'][i][j]:.2f},{g['hi'][i][j]:.2f}]", ha="center", va="center", fontsize=6)
    if seq_len:
        edge = sum(1 for n in g["lengths"] if n <= seq_len) - 0.5
        ax.axvline(edge, color="k", lw=1.5, ls="--")  # right of this line: longer than any training sequence
    ax.set_xlabel("context length (tokens)" + (f"; training seq_len {seq_len}" if seq_len else ""))
    ax.set_ylabel("needle depth")
    ax.set_title(title or f"needle in a haystack ({g['per_cell']} needles per cell)")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


__all__ = ["evaluate_needle", "heatmap"]
