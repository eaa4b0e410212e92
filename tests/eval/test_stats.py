"""herd.eval.stats: intervals and paired tests against reference values and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from herd.eval.stats import (
    bootstrap_mean,
    compare_binary,
    compare_rates,
    mcnemar,
    paired_bootstrap,
    pass_at_k,
    sign_flip,
    wilson,
)


def test_wilson_matches_reference_values() -> None:
    s = wilson(83, 100)  # by hand: centre (p + z²/2n)/(1 + z²/n) = 0.8178, half-width 0.0733
    assert (round(s.lo, 4), round(s.hi, 4)) == (0.7445, 0.8911)
    zero = wilson(0, 10)  # the normal interval says [0, 0]; Wilson keeps an honest upper bound
    assert zero.lo == 0 and 0.25 < zero.hi < 0.3
    assert wilson(10, 10).hi == 1.0 and wilson(10, 10).lo > 0.69
    with pytest.raises(ValueError, match="n >= 1"):
        wilson(0, 0)


def test_pass_at_k_equals_brute_force() -> None:
    for n, c, k in [(8, 3, 4), (5, 0, 2), (6, 6, 1), (10, 2, 5)]:
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(i < c for i in s) for s in subsets) / len(subsets)
        assert math.isclose(pass_at_k(n, c, k), brute, rel_tol=1e-9)


def test_mcnemar_exact_binomial() -> None:
    a = np.array([1] * 10 + [0] * 10)
    b = np.array([1] * 10 + [1] * 9 + [0])  # 9 items flip 0 -> 1, none 1 -> 0
    assert math.isclose(mcnemar(a, b), 2 * 0.5**9)
    assert mcnemar(a, a) == 1.0
    with pytest.raises(ValueError, match="same items"):
        mcnemar([1, 0], [1])


def test_paired_tests_detect_a_real_difference_and_not_a_null_one() -> None:
    rng = np.random.default_rng(0)
    a = (rng.random(1000) < 0.5).astype(int)
    better = np.where(rng.random(1000) < 0.1, 1, a)  # 10% of items turned right
    cmp = compare_binary(a, better)
    assert cmp.p_value < 1e-6 and cmp.lo > 0 and cmp.lo <= cmp.delta <= cmp.hi
    null = paired_bootstrap(a, np.where(rng.random(1000) < 0.5, a, 1 - a) * 0 + a)
    assert null.delta == 0 and null.p_value == 1.0


def test_bootstrap_weighted_mean_and_interval() -> None:
    x = np.r_[np.zeros(50), np.ones(50)]
    s = bootstrap_mean(x, seed=1)
    assert s.value == 0.5 and s.lo < 0.5 < s.hi and s.hi - s.lo < 0.3
    w = bootstrap_mean([1.0, 3.0], weights=[3, 1])
    assert w.value == pytest.approx(1.5)


def test_report_claims_a_difference_only_when_interval_and_test_agree(tmp_path) -> None:
    """5 of 50 items flip to correct, none back: the paired bootstrap interval excludes 0, but McNemar's exact
    p = 2 * 0.5**5 = 0.0625 does not reject at 5%: the report must not call it a difference."""
    from herd.eval.report import ModelResults, build_report
    from herd.eval.result import SuiteResult

    def suite(correct: list[int]) -> SuiteResult:
        return SuiteResult("multiple_choice", {"acc": wilson(sum(correct), len(correct))}, primary="acc",
                           samples=[{"id": f"q{i}", "correct": c} for i, c in enumerate(correct)])

    parent = ModelResults("a", "teacher", "d" * 64, {"multiple_choice": suite([0] * 50)})
    child = ModelResults("b", "student", "e" * 64, {"multiple_choice": suite([1] * 5 + [0] * 45)}, parent="d" * 64)
    (c,) = build_report([parent, child], tmp_path, seq_len=64)["comparisons"]
    assert c["lo"] > 0 and math.isclose(c["p_value"], 0.0625)
    assert c["significant"] is False


def test_sign_flip_matches_the_exact_permutation_distribution() -> None:
    """10 paired differences: every one of the 2**10 sign patterns enumerated by hand gives the exact p-value."""
    d = np.array([0.25, 0.125, 0.0, 0.375, -0.125, 0.25, 0.5, 0.0, 0.125, -0.25])
    means = np.array([abs(np.dot(signs, d)) / d.size for signs in itertools.product((-1, 1), repeat=d.size)])
    exact = np.mean(means >= abs(d.mean()) - 1e-12)
    p = sign_flip(np.zeros_like(d), d, resamples=200_000, seed=3)
    assert abs(p - exact) < 0.005 and 0.01 < exact < 0.2
    assert sign_flip([0.5, 0.25], [0.5, 0.25]) == 1.0
    with pytest.raises(ValueError, match="paired item"):
        sign_flip([], [])


def test_compare_rates_finds_a_shift_in_per_item_rates_and_not_noise() -> None:
    rng = np.random.default_rng(1)
    a = rng.binomial(8, 0.05, size=400) / 8  # each item's share of 8 samples right
    b = rng.binomial(8, 0.10, size=400) / 8
    up = compare_rates(a, b)
    assert up.method == "sign_flip" and up.p_value < 1e-3 and up.lo > 0 and up.delta == pytest.approx(b.mean() - a.mean())
    same = compare_rates(a, rng.binomial(8, 0.05, size=400) / 8)
    assert same.p_value > 0.01 and same.lo < 0 < same.hi


def test_report_pairs_sampled_pass_at_1_only_at_the_same_temperature(tmp_path) -> None:
    """RL's parent and child sampled 8 answers per item at T = 0.8: the report pairs their per-item shares
    (c / 8); a child sampled at another temperature is not paired on sampled pass@1, only greedily."""
    from herd.eval.report import SAMPLED, ModelResults, build_report
    from herd.eval.result import SuiteResult

    def suite(greedy: list[int], right: list[int], temperature: float) -> SuiteResult:
        samples = [{"id": f"q{i}", "correct": g, "sampled_correct": c} for i, (g, c) in enumerate(zip(greedy, right))]
        return SuiteResult("arithmetic", {"pass_at_1": wilson(sum(greedy), len(greedy))}, primary="pass_at_1",
                           samples=samples, extra={"samples": 8, "temperature": temperature})

    greedy = [0] * 60
    parent = ModelResults("sft", "sft", "d" * 64, {"arithmetic": suite(greedy, [0] * 50 + [1] * 10, 0.8)})
    child = ModelResults("rl", "rl", "e" * 64, {"arithmetic": suite(greedy, [2] * 50 + [1] * 10, 0.8)},
                         parent="d" * 64)
    comps = {c["suite"]: c for c in build_report([parent, child], tmp_path, seq_len=64)["comparisons"]}
    assert comps["arithmetic"]["delta"] == 0 and comps["arithmetic"]["significant"] is False
    s = comps[SAMPLED]
    assert s["delta"] == pytest.approx(50 * 2 / 8 / 60) and s["method"] == "sign_flip"
    assert s["p_value"] < 1e-3 and s["significant"] is True
    assert "arithmetic, sampled pass@1" in (tmp_path / "report.md").read_text()
    hot = ModelResults("rl", "rl", "e" * 64, {"arithmetic": suite(greedy, [2] * 60, 1.0)}, parent="d" * 64)
    assert SAMPLED not in {c["suite"] for c in build_report([parent, hot], tmp_path, seq_len=64)["comparisons"]}
