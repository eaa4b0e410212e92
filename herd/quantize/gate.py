"""The export gate: is the quantized model still the model? Measured against its parent before registration.

    agree = logit_agreement(parent, variant, heldout)              # {"kl": ..., "top1": ..., "tokens": ...}
    evals = paired_mini_eval(HerdLM(parent, tok), HerdLM(variant, tok), evalset_dir, 100, chat=True)
    check_gate("int4", {**agree, **evals}, thresholds, scheme)     # raises QualityGateError if a threshold fails

KL and top-1 agreement run over every position of the pipeline's own validation rows (held out: never trained
or calibrated on), thousands of tokens, and gate directly. The mini-evaluation is the evaluate flow's own:
herd.eval's arithmetic (greedy pass@1) and multiple-choice (4 options by log-likelihood) suites on the first
``n_items`` items of each in the pipeline's eval set (``evaluate.evalset``), so quantize and evaluate score the
same items the same way. Parent and variant answer the SAME items (scores differ only through quantization),
so the retention ratio needs far fewer items than two independent evaluations would. Retention = variant score
/ parent score over the pooled items (and per suite), with a paired-bootstrap 95 % interval; the gate fails it
when the whole interval lies below ``min_retention`` (a significant loss), since a hundred paired items move
by a flip or two.

``cloze_items`` / ``score_cloze`` (which of 4 spans continues a held-out text) need no eval set; the quality
benchmark reports them beside the suites (a weak model scores near chance on the suites, not on cloze).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

CONTEXT, SPAN, OPTIONS = 32, 8, 4


class QualityGateError(RuntimeError):
    """A quantized variant failed a gate threshold; the message says which, by how much, and what to try."""


@torch.inference_mode()
def logit_agreement(parent: nn.Module, variant: nn.Module, rows: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Mean KL(parent || variant) per token (nats) and top-1 agreement over every position of ``rows`` (N, T)."""
    if rows.numel() == 0:
        raise ValueError("no held-out rows to compare parent and variant on: raise calibration.heldout_samples or "
                         "pack more validation data")
    kl_sum, agree, n = 0.0, 0, 0
    for i in range(0, rows.shape[0], batch_size):
        ids = rows[i : i + batch_size]
        p = F.log_softmax(parent(ids).logits.float(), -1)
        q = F.log_softmax(variant(ids).logits.float(), -1)
        kl_sum += float((p.exp() * (p - q)).sum(-1).sum())
        agree += int((p.argmax(-1) == q.argmax(-1)).sum())
        n += ids.numel()
    return {"kl": kl_sum / n, "top1": agree / n, "tokens": float(n)}


def cloze_items(rows: torch.Tensor, n_items: int, seed: int = 0) -> list[tuple[list[int], list[list[int]], int]]:
    """Multiple-choice items from held-out rows: (context, options, index of the true continuation)."""
    rng = np.random.default_rng(seed)
    N, T = rows.shape
    if T < CONTEXT + SPAN or N < 2:
        raise ValueError(f"held-out rows of shape {tuple(rows.shape)} are too short or too few for cloze items "
                         f"(need >= 2 rows of >= {CONTEXT + SPAN} tokens); raise calibration.heldout_samples")
    items = []
    for _ in range(n_items):
        r = int(rng.integers(N))
        s = int(rng.integers(0, T - CONTEXT - SPAN + 1))
        ctx = rows[r, s : s + CONTEXT].tolist()
        true = rows[r, s + CONTEXT : s + CONTEXT + SPAN].tolist()
        opts = [true]
        while len(opts) < OPTIONS:
            r2 = int(rng.integers(N))
            if r2 == r:
                continue
            s2 = int(rng.integers(0, T - SPAN + 1))
            opts.append(rows[r2, s2 : s2 + SPAN].tolist())
        order = rng.permutation(OPTIONS)
        items.append((ctx, [opts[j] for j in order], int(np.argmax(order == 0))))
    return items


@torch.inference_mode()
def score_cloze(model: nn.Module, items: Sequence[tuple[list[int], list[list[int]], int]],
                batch_size: int = 64) -> list[float]:
    """1.0 where the model's highest-likelihood option is the true continuation (all rows have equal length)."""
    seqs = torch.tensor([ctx + opt for ctx, opts, _ in items for opt in opts])
    lls = []
    for i in range(0, seqs.shape[0], batch_size):
        ids = seqs[i : i + batch_size]
        logp = F.log_softmax(model(ids[:, :-1]).logits.float(), -1)
        tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
        lls.append(tok[:, -SPAN:].sum(-1))
    ll = torch.cat(lls).view(len(items), OPTIONS)
    return [float(int(ll[k].argmax()) == items[k][2]) for k in range(len(items))]


def paired_retention(parent: Sequence[float], variant: Sequence[float], seed: int = 0,
                     resamples: int = 2000) -> dict[str, float]:
    """Scores, retention = mean(variant) / mean(parent) and its paired-bootstrap 95 % interval (items resampled
    together for both models)."""
    a, b = np.asarray(parent, float), np.asarray(variant, float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), size=(resamples, len(a)))
    pa, pb = a[idx].mean(1), b[idx].mean(1)
    ratio = np.where(pa > 0, pb / np.where(pa > 0, pa, 1), np.nan)
    lo, hi = np.nanpercentile(ratio, [2.5, 97.5]) if np.isfinite(ratio).any() else (np.nan, np.nan)
    return {"parent_score": float(a.mean()), "variant_score": float(b.mean()),
            "retention": float(b.mean() / a.mean()) if a.mean() > 0 else float("nan"),
            "retention_lo": float(lo), "retention_hi": float(hi), "items": float(len(a)),
            "flips_lost": float(((a == 1) & (b == 0)).sum()), "flips_gained": float(((a == 0) & (b == 1)).sum())}


# the herd.eval suites the gate runs, and the short names their metrics carry (mc/retention, arith/...)
GATE_SUITES: tuple[str, ...] = ("arithmetic", "multiple_choice")
SHORT = {"arithmetic": "arith", "multiple_choice": "mc", "knowledge": "qa"}


def suite_outcomes(lm: Any, evalset_dir: str | Path, *, suites: Sequence[str] = GATE_SUITES, n_items: int | None,
                   chat: bool, arithmetic: Any | None = None) -> dict[str, list[float]]:
    """Per suite, the 0/1 outcome of each of the first ``n_items`` eval-set items (None: all), scored by herd.eval's
    own suite functions (greedy arithmetic pass@1, multiple-choice acc, knowledge exact match), so the gate and
    the evaluate flow score the same items the same way. ``lm`` is a ``herd.eval.HerdLM``; ``arithmetic`` an
    ``herd.eval.ArithmeticConfig`` (the recipe's ``evaluate.arithmetic``; default: its defaults)."""
    from herd.eval import (
        ArithmeticConfig,
        evaluate_arithmetic,
        evaluate_knowledge,
        evaluate_multiple_choice,
        read_items,
    )

    out: dict[str, list[float]] = {}
    for suite in suites:
        items = read_items(evalset_dir, suite)[:n_items]
        if not items:
            raise ValueError(f"the eval set {evalset_dir} holds no {suite} items; build it with herd.eval.build_evalset "
                             "(the evaluate flow's evaluate.evalset step)")
        if suite == "arithmetic":
            r = evaluate_arithmetic(lm, items, arithmetic or ArithmeticConfig(), chat=chat, sampled=False)
        elif suite == "multiple_choice":
            r = evaluate_multiple_choice(lm, items, chat=chat)
        elif suite == "knowledge":
            r = evaluate_knowledge(lm, items, chat=chat)
        else:
            raise ValueError(f"suite {suite!r} has no 0/1 outcome per item; use arithmetic, multiple_choice, knowledge")
        by_id = r.outcomes()
        out[suite] = [by_id[it["id"]] for it in items]
    return out


def paired_report(parent: dict[str, list[float]], variant: dict[str, list[float]], seed: int = 0) -> dict[str, float]:
    """Per-suite (``arith/...``, ``mc/...``, ``qa/...``) and pooled retention of ``variant`` against ``parent`` on the
    same items (``suite_outcomes`` of each); pooled = every item of every suite, each weighing the same."""
    out: dict[str, float] = {}
    pa: list[float] = []
    pb: list[float] = []
    for suite, a in parent.items():
        b = variant[suite]
        if len(a) != len(b):
            raise ValueError(f"{suite}: {len(a)} parent outcomes vs {len(b)} variant outcomes; pair them on the same items")
        out.update({f"{SHORT.get(suite, suite)}/{k}": v for k, v in paired_retention(a, b, seed).items()})
        pa, pb = pa + list(a), pb + list(b)
    out.update(paired_retention(pa, pb, seed))
    return out


def paired_mini_eval(parent: Any, variant: Any, evalset_dir: str | Path, n_items: int | None, *, chat: bool,
                     arithmetic: Any | None = None, suites: Sequence[str] = GATE_SUITES,
                     seed: int = 0) -> dict[str, float]:
    """herd.eval's arithmetic and multiple-choice suites on the same ``n_items`` items per suite for the parent
    and the variant (both ``herd.eval.HerdLM``), paired: per-suite and pooled retention."""
    kw = {"suites": suites, "n_items": n_items, "chat": chat, "arithmetic": arithmetic}
    return paired_report(suite_outcomes(parent, evalset_dir, **kw), suite_outcomes(variant, evalset_dir, **kw), seed)


def _advice(scheme: Any) -> str:
    if scheme is None:
        return "try GPTQ instead of RTN or smaller groups"
    tips = []
    if getattr(scheme, "method", "rtn") == "rtn" and scheme.scheme != "fp8":
        tips.append(f"set method: gptq for {scheme.scheme} (calibrated error compensation)")
    if scheme.scheme == "int4" and scheme.group_size > 32:
        tips.append(f"use smaller groups (group_size {scheme.group_size} -> {scheme.group_size // 2})")
    if scheme.scheme == "int4":
        tips.append("use int8 for this model")
    if getattr(scheme, "method", "") == "gptq":
        tips.append("raise quantize.calibration.samples" + ("" if scheme.act_order else " or set act_order: true"))
    return "; ".join(tips) or "keep this model unquantized or lower the threshold in quantize.schemes[].gate"


def check_gate(name: str, metrics: dict[str, float], thresholds: dict[str, float], scheme: Any = None) -> list[str]:
    """Raise QualityGateError naming every failed threshold, by how much, and what to try; return the passed
    checks as readable lines otherwise. ``thresholds`` holds max_kl, min_top1, min_retention."""
    failed, passed = [], []
    kl, top1 = metrics["kl"], metrics["top1"]
    line = f"KL(parent||{name}) {kl:.4g} nats/token vs max_kl {thresholds['max_kl']:.4g}"
    (failed if kl > thresholds["max_kl"] else passed).append(
        line + (f" ({kl / max(thresholds['max_kl'], 1e-12):.1f}x the limit)" if kl > thresholds["max_kl"] else ""))
    line = f"top-1 agreement {top1:.4f} vs min_top1 {thresholds['min_top1']:.4f}"
    (failed if top1 < thresholds["min_top1"] else passed).append(
        line + (f" ({thresholds['min_top1'] - top1:.4f} short)" if top1 < thresholds["min_top1"] else ""))
    ret, hi = metrics.get("retention"), metrics.get("retention_hi")
    if ret is not None and np.isfinite(ret):
        # a paired mini-eval of a few hundred items moves by a flip or two: fail only a loss that is significant,
        # i.e. when even the top of the 95 % interval is below the threshold
        lost = hi < thresholds["min_retention"]
        line = (f"mini-eval retention {ret:.4f} ({metrics['variant_score']:.4f} / {metrics['parent_score']:.4f} "
                f"on {int(metrics['items'])} paired items, 95% CI {metrics['retention_lo']:.3f}-{hi:.3f}) "
                f"vs min_retention {thresholds['min_retention']:.4f}")
        (failed if lost else passed).append(
            line + (f" (the whole interval is below it; the point estimate is "
                    f"{thresholds['min_retention'] - ret:.4f} short)" if lost else ""))
    if failed:
        raise QualityGateError(f"quantized variant {name} failed the export gate: " + "; ".join(failed)
                               + f". Try: {_advice(scheme)}.")
    return passed


__all__ = ["GATE_SUITES", "QualityGateError", "check_gate", "cloze_items", "logit_agreement", "paired_mini_eval",
           "paired_report", "paired_retention", "score_cloze", "suite_outcomes"]
