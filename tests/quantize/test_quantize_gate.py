"""The export gate: a variant that must fail does, with the threshold, by how much, and what to try; a variant
that must pass does; the mini-evaluation is herd.eval's arithmetic and multiple-choice suites on the eval set's
items, paired with the parent on the same items."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from herd.model import Llama4
from herd.quantize import GateConfig, QuantScheme
from herd.quantize.gate import (
    CONTEXT,
    SPAN,
    QualityGateError,
    check_gate,
    cloze_items,
    logit_agreement,
    paired_mini_eval,
    paired_report,
    paired_retention,
    suite_outcomes,
)
from herd.quantize.modules import load_quantized


@pytest.fixture(scope="module")
def heldout() -> torch.Tensor:
    return torch.randint(13, 512, (6, 64), generator=torch.Generator().manual_seed(7))


def test_coarse_rtn_int4_fails_a_tight_gate_with_advice(tiny_model: Llama4, tmp_path: Path,
                                                       heldout: torch.Tensor) -> None:
    from herd.quantize.export import export_compressed
    from herd.quantize.targets import quantize_weights

    scheme = QuantScheme(scheme="int4", group_size=128, gate=GateConfig(max_kl=1e-4, min_top1=0.99))
    out = export_compressed(tiny_model, quantize_weights(tiny_model, scheme), scheme, tmp_path)
    variant = load_quantized(out, dtype=torch.float32)
    metrics = logit_agreement(tiny_model, variant, heldout)
    assert metrics["tokens"] == heldout.numel() and metrics["kl"] > 1e-4
    with pytest.raises(QualityGateError) as err:
        check_gate("int4", metrics, scheme.gate.resolved("int4"), scheme)
    msg = str(err.value)
    assert "max_kl 0.0001" in msg and "x the limit" in msg  # which threshold and by how much
    assert "min_top1 0.99" in msg and "short" in msg
    assert "method: gptq" in msg and "group_size 128 -> 64" in msg  # what to try


def _lm(model: torch.nn.Module, eval_set: dict[str, Path]):
    from herd.data.tokenizer import load_tokenizer
    from herd.eval import HerdLM

    return HerdLM(model, load_tokenizer(eval_set["tokenizer"]), batch_size=16)


def test_int8_passes_its_default_gate_on_herd_eval_items(tiny_model: Llama4, exports: dict[str, Path],
                                                         heldout: torch.Tensor, eval_set: dict[str, Path]) -> None:
    from herd.eval import ArithmeticConfig, evaluate_multiple_choice, read_items

    variant = load_quantized(exports["int8"], dtype=torch.float32)
    metrics = logit_agreement(tiny_model, variant, heldout)
    arith = ArithmeticConfig(max_new_tokens=8)
    parent_lm, variant_lm = _lm(tiny_model, eval_set), _lm(variant, eval_set)
    metrics.update(paired_mini_eval(parent_lm, variant_lm, eval_set["evalset"], 10, chat=False, arithmetic=arith))
    passed = check_gate("int8", metrics, GateConfig().resolved("int8"), QuantScheme(scheme="int8"))
    assert any(line.startswith("KL(parent||int8)") for line in passed) and len(passed) >= 2
    # the first 10 items of each suite, pooled; per-suite numbers beside the pooled ones
    assert metrics["arith/items"] == 10 and metrics["mc/items"] == 10 and metrics["items"] == 20
    assert metrics["parent_score"] == pytest.approx((metrics["arith/parent_score"] + metrics["mc/parent_score"]) / 2)
    # the gate scores exactly what the evaluate flow scores on those items (herd.eval's suite, same prompts)
    items = read_items(eval_set["evalset"], "multiple_choice")[:10]
    ref = evaluate_multiple_choice(parent_lm, items).outcomes()
    assert suite_outcomes(parent_lm, eval_set["evalset"], suites=["multiple_choice"], n_items=10,
                          chat=False)["multiple_choice"] == [ref[it["id"]] for it in items]


def test_paired_report_pools_suites_and_names_them() -> None:
    parent = {"arithmetic": [1.0, 0.0, 1.0, 1.0], "multiple_choice": [1.0, 1.0, 0.0, 0.0], "knowledge": [1.0, 1.0]}
    variant = {"arithmetic": [1.0, 0.0, 0.0, 1.0], "multiple_choice": [1.0, 1.0, 0.0, 1.0], "knowledge": [1.0, 1.0]}
    r = paired_report(parent, variant)
    assert r["arith/retention"] == pytest.approx(2 / 3) and r["mc/retention"] == pytest.approx(3 / 2)
    assert r["qa/retention"] == 1.0 and r["items"] == 10 and r["retention"] == pytest.approx(7 / 7)
    assert r["flips_lost"] == 1 and r["flips_gained"] == 1
    with pytest.raises(ValueError, match="same items"):
        paired_report(parent, {**variant, "knowledge": [1.0]})


def test_retention_gate_fails_only_a_significant_loss() -> None:
    thresholds = {"max_kl": 1.0, "min_top1": 0.0, "min_retention": 0.99}
    base = {"kl": 0.0, "top1": 1.0}
    parent = [1.0] * 300 + [0.0] * 100
    one_flip = [0.0] + parent[1:]  # 299 / 300 = 0.9967: noise, not a loss
    check_gate("int8", {**base, **paired_retention(parent, one_flip)}, thresholds)
    many = [0.0] * 30 + parent[30:]  # 270 / 300 = 0.90 with a tight paired interval
    with pytest.raises(QualityGateError, match=r"mini-eval retention 0.9000 .* whole interval is below"):
        check_gate("int8", {**base, **paired_retention(parent, many)}, thresholds)


def test_paired_retention_interval_contains_the_estimate() -> None:
    r = paired_retention([1, 1, 0, 1, 0, 1, 1, 1] * 20, [1, 0, 0, 1, 0, 1, 1, 1] * 20)
    assert r["retention_lo"] <= r["retention"] <= r["retention_hi"] and r["flips_lost"] == 20
    assert r["retention"] == pytest.approx(5 / 6)


def test_cloze_items_are_deterministic_and_hold_the_truth(heldout: torch.Tensor) -> None:
    a, b = cloze_items(heldout, 20, seed=1), cloze_items(heldout, 20, seed=1)
    assert a == b
    rows = [r.tolist() for r in heldout]
    for ctx, opts, k in a:
        assert len(opts) == 4 and all(len(o) == 8 for o in opts)
        n = CONTEXT + SPAN
        assert any(any(r[i : i + n] == ctx + opts[k] for i in range(len(r) - n + 1)) for r in rows)
