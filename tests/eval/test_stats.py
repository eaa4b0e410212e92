"""herd.eval.stats: intervals and paired tests against reference values and brute force."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from herd.eval.stats import bootstrap_mean, compare_binary, mcnemar, paired_bootstrap, pass_at_k, wilson


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
