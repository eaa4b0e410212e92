"""The export gate: is the quantized model still the model? Measured against its parent before registration.

    agree = logit_agreement(parent, variant, heldout)              # {"kl": ..., "top1": ..., "tokens": ...}
    evals = paired_mini_eval(parent, variant, heldout, tokenizer, n_items=200)   # paired per-item scores
    check_gate("int4", {**agree, **evals}, thresholds, scheme)     # raises QualityGateError if a threshold fails

Held-out tokens are the pipeline's own validation rows, disjoint from the calibration rows. The mini-evaluation
pairs parent and variant on the SAME items (scores differ only through quantization), so its retention ratio
needs far fewer items than two independent evaluations would:
  multiple choice  cloze on held-out text: after 32 tokens of context, which of 4 8-token continuations comes
                   next (the true one or spans from other rows), by summed log-likelihood (HellaSwag-style)
  arithmetic       herd's synthetic word problems, greedy decoding, the last integer must equal the answer
Retention is variant score / parent score over the pooled items, with a paired-bootstrap 95 % interval; the
gate fails it when the whole interval lies below ``min_retention`` (a significant loss), since a few hundred
paired items move by a flip or two. KL and top-1 run over thousands of held-out tokens and gate directly.
"""

from __future__ import annotations

from collections.abc import Sequence
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


def score_arithmetic(model: nn.Module, tokenizer: Any, n_items: int, seed: int = 0,
                     batch_size: int = 32) -> list[float]:
    """1.0 where greedy decoding of ``Question: ...\\nSolution:`` ends in the right integer."""
    from herd.data.synthetic.arithmetic import check_answer, make_problems
    from herd.data.tokenizer import encode_plain
    from herd.model.generate import SamplingParams, generate

    problems = make_problems(n_items, np.random.default_rng(10_000 + seed))
    bos = model.config.bos_token_id
    prompts = [[bos, *ids] for ids in encode_plain(tokenizer, [f"Question: {p.question}\nSolution:" for p in problems])]
    scores = []
    params = SamplingParams(temperature=0.0, max_new_tokens=24)
    for i in range(0, len(prompts), batch_size):
        gens = generate(model, prompts[i : i + batch_size], params)
        for g, p in zip(gens, problems[i : i + batch_size], strict=True):
            scores.append(float(check_answer(tokenizer.decode(g.tokens), p.answer)))
    return scores


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


def paired_mini_eval(parent: nn.Module, variant: nn.Module, rows: torch.Tensor, tokenizer: Any | None,
                     n_items: int, seed: int = 0) -> dict[str, float]:
    """Cloze multiple choice (``n_items``) and arithmetic (``n_items // 4``, needs the tokenizer), paired."""
    items = cloze_items(rows, n_items, seed)
    out: dict[str, float] = {}
    pa, pb = score_cloze(parent, items), score_cloze(variant, items)
    out.update({f"mc/{k}": v for k, v in paired_retention(pa, pb, seed).items()})
    if tokenizer is not None and n_items >= 4:
        aa = score_arithmetic(parent, tokenizer, n_items // 4, seed)
        ab = score_arithmetic(variant, tokenizer, n_items // 4, seed)
        out.update({f"arith/{k}": v for k, v in paired_retention(aa, ab, seed).items()})
        pa, pb = pa + aa, pb + ab
    out.update(paired_retention(pa, pb, seed))
    return out


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


__all__ = ["QualityGateError", "check_gate", "cloze_items", "logit_agreement", "paired_mini_eval",
           "paired_retention", "score_arithmetic", "score_cloze"]
