"""lm-eval on herd's task YAMLs: legal MLflow names, and the cross-check of herd's MC scoring against lm-eval's
HF backend (transformers running the same checkpoint) on the same eval-set items."""

from __future__ import annotations

import math

import pytest
from mlflow.utils.validation import _validate_metric_name

from herd.eval import evaluate_multiple_choice, read_items
from herd.eval.harness import HERD_TASKS, TASKS_DIR, mlflow_names
from herd.eval.lm import HerdLM


def test_lm_eval_keys_become_legal_mlflow_names() -> None:
    names = mlflow_names({"herd_mc": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "herd_mc"},
                          "herd_arith": {"exact_match,strict-match": 0.2, "sample_len": 10}})
    assert names == {"harness/herd_mc/acc": 0.5, "harness/herd_mc/acc_stderr": 0.1,
                     "harness/herd_arith/exact_match_strict-match": 0.2, "harness/herd_arith/sample_len": 10.0}
    for key in names:
        _validate_metric_name(key)  # raises on an illegal name (lm-eval's "acc,none" would)


def test_task_yamls_ship_with_the_package_and_read_local_jsonl() -> None:
    for task in HERD_TASKS:
        text = (TASKS_DIR / f"{task}.yaml").read_text()
        assert f"task: {task}" in text and "custom_dataset: !function utils." in text
        assert "dataset_path" not in text  # nothing to download


@pytest.mark.slow
def test_herd_and_lm_eval_hf_agree_on_multiple_choice(eval_data, tiny_model_dir) -> None:
    pytest.importorskip("lm_eval")
    pytest.importorskip("accelerate")  # lm-eval's hf backend needs it
    from herd.eval.harness import run_harness

    items = read_items(eval_data["evalset"], "multiple_choice")
    ours = evaluate_multiple_choice(HerdLM.load(tiny_model_dir), items)
    theirs = run_harness(eval_data["evalset"], backend="hf", pretrained=tiny_model_dir, tasks=["herd_mc"],
                         batch_size=8)
    acc = ours.metrics["acc"]
    assert acc.lo <= theirs.metrics["harness/herd_mc/acc"] <= acc.hi
    # stronger: the same log-likelihood for every option of every item (transformers vs herd's forward)
    by_id = {s["doc"]["id"]: [float(r[0][0]) for r in s["resps"]] for s in theirs.samples["herd_mc"]}
    for s in ours.samples:
        assert all(math.isclose(a, b, abs_tol=2e-3) for a, b in zip(s["loglik"], by_id[s["id"]], strict=True))
