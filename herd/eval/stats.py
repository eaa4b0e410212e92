"""Confidence intervals and paired tests for evaluation scores (numpy and the standard library, no torch).

    wilson(k=83, n=100)                    # Score(0.83, lo, hi) for a proportion (exact-match accuracy)
    bootstrap_mean(values, seed=0)         # Score for a mean of per-item values (pass@k, per-sequence loss)
    mcnemar(a, b)                          # exact McNemar p-value for two 0/1 vectors on the same items
    paired_bootstrap(a, b, seed=0)         # Comparison: mean(b - a), its CI and a two-sided p-value
    compare_rates(a, b, seed=0)            # per-item rates (sampled pass@1): bootstrap CI, sign-flip p-value
    pass_at_k(n=8, c=3, k=4)               # unbiased pass@k estimator (Chen et al. 2021, "Codex")

Why Wilson and not the normal interval: eval sets are small and scores are often near 0 or 1, where the
normal interval collapses to a point (0 +- 0) and says the model is exactly 0; Wilson stays honest there.
Paired tests use the same items for both models, which removes item difficulty from the comparison:
far smaller differences are detectable than by comparing two independent intervals.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Score:
    """A point estimate with its confidence interval; ``n`` items; ``method`` names the interval."""

    value: float
    lo: float
    hi: float
    n: int
    method: str = "wilson"

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.lo:.3f}, {self.hi:.3f}] (n={self.n})"


@dataclass(frozen=True)
class Comparison:
    """A paired comparison of model b against model a on the same items."""

    delta: float  # mean(b) - mean(a)
    lo: float
    hi: float
    p_value: float
    n: int
    method: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _z(confidence: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(k: float, n: int, confidence: float = 0.95) -> Score:
    """Wilson score interval of a proportion ``k / n``."""
    if n <= 0:
        raise ValueError("wilson needs n >= 1 items; the suite scored nothing")
    if not 0 <= k <= n:
        raise ValueError(f"wilson: k={k} successes out of n={n} is impossible")
    z = _z(confidence)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the edges (float rounding leaves 1e-17)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return Score(p, lo, hi, n, "wilson")


def bootstrap_mean(values: Sequence[float] | np.ndarray, *, confidence: float = 0.95, resamples: int = 1000,
                   seed: int = 0, weights: Sequence[float] | np.ndarray | None = None) -> Score:
    """Percentile bootstrap CI of a (weighted) mean over items; weights resample with their item."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("bootstrap_mean needs at least one value")
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    means = (x[idx] * w[idx]).sum(1) / np.maximum(w[idx].sum(1), 1e-12)
    a = (1 - confidence) / 2
    return Score(float((x * w).sum() / w.sum()), float(np.quantile(means, a)), float(np.quantile(means, 1 - a)),
                 int(x.size), "bootstrap")


def mcnemar(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray) -> float:
    """Exact (binomial) McNemar p-value, two-sided: do 0/1 outcomes a and b on the same items differ?"""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"mcnemar needs paired outcomes on the same items, got {x.shape} and {y.shape}")
    n01, n10 = int((~x & y).sum()), int((x & ~y).sum())
    if n01 + n10 == 0:
        return 1.0
    # exact two-sided binomial test of the discordant pairs against p = 1/2 (symmetric, so double one tail)
    m = n01 + n10
    tail = sum(math.comb(m, i) for i in range(min(n01, n10) + 1)) / 2**m
    return float(min(1.0, 2 * tail))


def paired_bootstrap(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *,
                     confidence: float = 0.95, resamples: int = 1000, seed: int = 0) -> Comparison:
    """Paired bootstrap of mean(b - a) over shared items; p-value from the share of resamples crossing 0."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.size == 0:
        raise ValueError(f"paired_bootstrap needs two equal, non-empty vectors; got {x.shape} and {y.shape}")
    d = y - x
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, size=(resamples, d.size))].mean(1)
    a_ = (1 - confidence) / 2
    p = 2 * min((means <= 0).mean(), (means >= 0).mean())
    return Comparison(float(d.mean()), float(np.quantile(means, a_)), float(np.quantile(means, 1 - a_)),
                      float(min(1.0, p)), int(d.size), "paired_bootstrap")


def compare_binary(a: Sequence[int] | np.ndarray, b: Sequence[int] | np.ndarray, *, confidence: float = 0.95,
                   resamples: int = 1000, seed: int = 0) -> Comparison:
    """Paired comparison of two 0/1 vectors: bootstrap CI of the accuracy difference, exact McNemar p-value."""
    boot = paired_bootstrap(a, b, confidence=confidence, resamples=resamples, seed=seed)
    return Comparison(boot.delta, boot.lo, boot.hi, mcnemar(a, b), boot.n, "mcnemar")


def sign_flip(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, resamples: int = 10000,
              seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) test of mean(b - a) = 0: under the null each item's difference is
    as likely negated, so flip each sign at random and count means at least as far from 0 (+1 smoothing)."""
    d = np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64)
    if d.size == 0:
        raise ValueError("sign_flip needs at least one paired item")
    observed = abs(d.mean())
    if observed == 0:
        return 1.0
    rng = np.random.default_rng(seed)
    flips = rng.choice((-1.0, 1.0), size=(resamples, d.size))
    # a tolerance: mean of the same multiset of values computed in another order differs in the last bits
    extreme = np.count_nonzero(np.abs((flips * d).mean(1)) >= observed - 1e-12)
    return float((extreme + 1) / (resamples + 1))


def compare_rates(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, confidence: float = 0.95,
                  resamples: int = 1000, seed: int = 0) -> Comparison:
    """Paired comparison of per-item success rates in [0, 1] (e.g. c/n of n samples each, sampled pass@1):
    bootstrap CI of the mean difference, sign-flip permutation p-value (exact in its null, unlike the bootstrap's
    share of resamples crossing 0, which reads 0 whenever none does)."""
    boot = paired_bootstrap(a, b, confidence=confidence, resamples=resamples, seed=seed)
    return Comparison(boot.delta, boot.lo, boot.hi, sign_flip(a, b, resamples=max(resamples, 10000), seed=seed),
                      boot.n, "sign_flip")


def shared_items(a: dict[str, float], b: dict[str, float]) -> tuple[list[float], list[float]]:
    """The values of the items both ``{item id: value}`` maps scored, in id order (what a paired test compares)."""
    ids = sorted(set(a) & set(b))
    return [a[i] for i in ids], [b[i] for i in ids]


def compare(parent: Any, child: Any, *, confidence: float = 0.95, resamples: int = 1000,
            seed: int = 0) -> Comparison | None:
    """Paired comparison of suite result ``child`` against ``parent`` on the items both scored (None when they
    share none). 0/1 outcomes (accuracy suites): McNemar's exact test with a paired-bootstrap CI of the accuracy
    difference; per-item values (perplexity's per-sequence loss): a paired bootstrap. Arguments are
    ``herd.eval.result.SuiteResult`` (anything with ``outcomes()`` and ``outcome_key``)."""
    x, y = shared_items(parent.outcomes(), child.outcomes())
    if not x:
        return None
    if child.outcome_key == "correct":
        return compare_binary(x, y, confidence=confidence, resamples=resamples, seed=seed)
    return paired_bootstrap(x, y, confidence=confidence, resamples=resamples, seed=seed)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k), for c correct among n samples (numerically stable form)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


__all__ = ["Comparison", "Score", "bootstrap_mean", "compare", "compare_binary", "compare_rates", "mcnemar",
           "paired_bootstrap", "pass_at_k", "shared_items", "sign_flip", "wilson"]
