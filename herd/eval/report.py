"""The comparison across models: one table (model, stage, each suite's score +- CI), paired tests against each
model's parent, a markdown report and one PNG chart, plus each model's NIAH heatmap.

    rows = [ModelResults(label="student [3f9a..]", role="student", digest=..., parent=teacher_digest,
                         suites=read_results(dir)[1])]
    summary = build_report(rows, out_dir, seq_len=256)      # report.md, comparison.png, niah_<role>.png, comparison.json
    print(render_table(summary))                            # what `herd eval show` prints

Paired comparisons use the items both models scored (same eval set): McNemar's exact test with a paired
bootstrap CI for accuracy suites, a paired bootstrap for perplexity's per-sequence loss. Only a difference
whose interval excludes 0 is called one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.eval.result import SuiteResult
from herd.eval.stats import Comparison, compare, compare_rates, shared_items

# The headline metric of each suite (what the table and chart show).
PRIMARY = {"perplexity": "perplexity", "knowledge": "exact_match", "arithmetic": "pass_at_1",
           "multiple_choice": "acc", "needle": "acc", "image": "acc"}
SAMPLED = "arithmetic_sampled"  # the comparison of sampled pass@1 (arithmetic's per-item share of right samples)
SUITE_ORDER = ("perplexity", "knowledge", "multiple_choice", "arithmetic", "needle", "image")


@dataclass
class ModelResults:
    label: str
    role: str
    digest: str
    suites: dict[str, SuiteResult]
    parent: str | None = None  # digest of the model it was made from, when that model was evaluated too
    model_id: str | None = None
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _cell(r: SuiteResult | None) -> dict[str, Any] | None:
    if r is None:
        return None
    if r.skipped:
        return {"skipped": r.skipped}
    s = r.metrics.get(PRIMARY.get(r.suite, r.primary)) or r.primary_score
    return None if s is None else {"metric": PRIMARY.get(r.suite, r.primary), **s.to_dict()}


def build_report(models: list[ModelResults], out_dir: str | Path, *, seq_len: int | None = None,
                 confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
    """Write report.md, comparison.png, niah_<role>.png and comparison.json; return the summary dict."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    by_digest = {m.digest: m for m in models}
    suites = [s for s in SUITE_ORDER if any(s in m.suites for m in models)]
    rows, comparisons = [], []
    for m in models:
        rows.append({"label": m.label, "role": m.role, "digest": m.digest, "model_id": m.model_id,
                     "seconds": m.seconds, "suites": {s: _cell(m.suites.get(s)) for s in suites}})
        parent = by_digest.get(m.parent or "")
        if parent is None:
            continue
        for s in suites:
            a, b = parent.suites.get(s), m.suites.get(s)
            if a is None or b is None or a.skipped or b.skipped:
                continue
            pairs = [(s, compare(a, b, confidence=confidence, seed=seed))]
            if s == "arithmetic":
                pairs.append((SAMPLED, compare_sampled(a, b, confidence=confidence, seed=seed)))
            for name, c in pairs:
                if c is None:
                    continue
                # a difference to claim: the interval excludes 0 AND the test rejects at 1-conf
                # (a bootstrap interval can graze 0 while the exact McNemar test does not reject, or vice versa)
                differs = (c.lo > 0 or c.hi < 0) and c.p_value < 1 - confidence
                comparisons.append({"model": m.label, "parent": parent.label, "suite": name, **c.to_dict(),
                                    "significant": bool(differs)})
    summary = {"suites": suites, "rows": rows, "comparisons": comparisons, "confidence": confidence}
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    files = {"chart": _chart(models, suites, out / "comparison.png", confidence)}
    from herd.eval.needle import heatmap

    for m in models:
        r = m.suites.get("needle")
        if r is not None and not r.skipped:
            files[f"niah_{m.role}"] = heatmap(r, out / f"niah_{m.role}.png", seq_len=seq_len,
                                              title=f"NIAH: {m.label}")
    (out / "report.md").write_text(render_markdown(summary, [p.name for p in files.values()]))
    summary["files"] = {k: str(v) for k, v in files.items()}
    return summary


def compare_sampled(parent: SuiteResult, child: SuiteResult, *, confidence: float = 0.95,
                    seed: int = 0) -> Comparison | None:
    """Paired sampled pass@1 (each item's share of right samples) of two arithmetic results, or None unless both
    sampled the same items with the same number of samples at the same temperature."""
    keys = ("samples", "temperature")
    if any(parent.extra.get(k) != child.extra.get(k) for k in keys) or not parent.extra.get("samples"):
        return None
    x, y = shared_items(parent.sampled_outcomes(), child.sampled_outcomes())
    return compare_rates(x, y, confidence=confidence, seed=seed) if x else None


def _fmt(cell: dict[str, Any] | None) -> str:
    if cell is None:
        return "-"
    if "skipped" in cell:
        return "skipped"
    return f"{cell['value']:.3f} [{cell['lo']:.3f}, {cell['hi']:.3f}]"


def render_markdown(summary: dict[str, Any], images: list[str]) -> str:
    suites = summary["suites"]
    lines = ["# herd evaluation: every model, every suite", "",
             f"Scores with {summary['confidence']:.0%} confidence intervals (Wilson for accuracies, bootstrap for "
             "perplexity and pass@k). Headline metric per suite: "
             + ", ".join(f"{s} = {PRIMARY[s]}" for s in suites) + ".", "",
             "| model | stage | " + " | ".join(suites) + " | seconds |",
             "|---|---|" + "---|" * len(suites) + "---|"]
    for r in summary["rows"]:
        lines.append(f"| {r['label']} | {r['role']} | " + " | ".join(_fmt(r['suites'].get(s)) for s in suites)
                     + f" | {r['seconds']:.1f} |")
    skipped = {(s, c["skipped"]) for r in summary["rows"] for s, c in r["suites"].items() if c and "skipped" in c}
    if skipped:
        lines += ["", "Skipped: " + "; ".join(f"{s}: {why}" for s, why in sorted(skipped))]
    if summary["comparisons"]:
        lines += ["", "## Paired comparisons against the parent model (same items)", "",
                  "| model | parent | suite | delta | CI | p | test | differs |", "|---|---|---|---|---|---|---|---|"]
        for c in summary["comparisons"]:
            what = {"perplexity": "perplexity (per-sequence loss, nats)",
                    SAMPLED: "arithmetic, sampled pass@1"}.get(c["suite"], c["suite"])
            lines.append(f"| {c['model']} | {c['parent']} | {what} | {c['delta']:+.3f} | "
                         f"[{c['lo']:+.3f}, {c['hi']:+.3f}] | {c['p_value']:.3g} | {c['method']} | "
                         f"{'yes' if c['significant'] else 'no'} |")
    lines += ["", *[f"![{name}]({name})" for name in images], ""]
    return "\n".join(lines)


def _chart(models: list[ModelResults], suites: list[str], path: Path, confidence: float) -> Path:
    """One PNG: accuracy suites as grouped bars with CI whiskers, perplexity in its own panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    acc_suites = [s for s in suites if s != "perplexity"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [max(1, len(acc_suites)), 1]})
    width = 0.8 / max(1, len(models))
    for k, m in enumerate(models):
        vals, err = [], [[], []]
        for s in acc_suites:
            c = _cell(m.suites.get(s))
            ok = c is not None and "value" in c
            vals.append(c["value"] if ok else np.nan)
            err[0].append(c["value"] - c["lo"] if ok else 0)
            err[1].append(c["hi"] - c["value"] if ok else 0)
        axes[0].bar(np.arange(len(acc_suites)) + k * width, vals, width, yerr=err, capsize=3, label=m.label)
        p = _cell(m.suites.get("perplexity"))
        if p is not None and "value" in p:
            axes[1].bar([k], [p["value"]], yerr=[[p["value"] - p["lo"]], [p["hi"] - p["value"]]], capsize=3)
    axes[0].set_xticks(np.arange(len(acc_suites)) + width * (len(models) - 1) / 2,
                       [f"{s}\n({PRIMARY[s]})" for s in acc_suites], fontsize=8)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel(f"score ({confidence:.0%} CI)")
    axes[0].axhline(0.25, color="grey", ls=":", lw=0.8)  # multiple-choice chance
    axes[0].legend(fontsize=7)
    axes[1].set_xticks(range(len(models)), [m.role for m in models], fontsize=8)
    axes[1].set_title("held-out perplexity (lower is better)", fontsize=9)
    fig.suptitle("herd models on the same eval set")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render_table(summary: dict[str, Any]) -> Any:
    """A rich Table of the summary (what ``herd eval show`` prints)."""
    from rich.table import Table

    t = Table(title="herd evaluation", show_lines=False)
    t.add_column("model")
    t.add_column("stage")
    for s in summary["suites"]:
        t.add_column(f"{s}\n{PRIMARY.get(s, '')}", justify="right")
    for r in summary["rows"]:
        t.add_row(r["label"], r["role"], *[_fmt(r["suites"].get(s)) for s in summary["suites"]])
    return t


__all__ = ["PRIMARY", "SUITE_ORDER", "ModelResults", "build_report", "render_markdown", "render_table"]
