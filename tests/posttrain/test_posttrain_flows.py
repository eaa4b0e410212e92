"""The sft, rl and dpo flows end to end, on the session's finished ``test`` pipeline (tests/conftest.py
``finished_pipeline``: real local Ray, Ray Train, MLflow on sqlite; the ``posttrain`` section of
herd/platform/recipes/test.yaml sizes it).

Checks the contract, not model quality (that is docs/benchmarks.md "posttrain"): the judge's ledger and kept
data, the SFT/RL/DPO models as LoggedModels with their roles and lineage to the parent, the RL ledger in -> out,
the on-policy pairs, the DPO reference log-probs, the paired held-out comparison and the MLflow metrics.
Cache reuse of finished steps is the runner's contract (tests/platform)."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from herd.model import load_hf
from herd.platform.lineage import LineageReader, steps_in
from herd.platform.store import ArtifactStore

pytestmark = pytest.mark.slow


def test_sft_rl_dpo_flows(finished_pipeline):
    res, post = finished_pipeline.result, finished_pipeline.recipe.posttrain
    assert {"sft.judge", "sft.train", "rl.train", "dpo.train"} <= set(res.executed)
    client = MlflowClient(finished_pipeline.tracking_uri)
    get = ArtifactStore(finished_pipeline.store).get

    # judge: every SFT example and RL prompt in the ledger; half of each capability dropped
    judge = res.records["sft.judge"]
    ledger = [json.loads(x) for x in (get(judge.outputs["ledger"]).local_path() / "ledger.jsonl")
              .read_text().splitlines()]
    sft_rows = [e for e in ledger if e["extra"]["pool"] == "sft"]
    rl_rows = [e for e in ledger if e["extra"]["pool"] == "rl"]
    assert sft_rows and rl_rows and all("judge" in e["extra"] for e in ledger)
    kept = sum(e["extra"]["kept"] for e in sft_rows)
    assert 0.4 <= kept / len(sft_rows) <= 0.6
    assert all(e["attempts"] == post.judge.k for e in rl_rows)  # seeded with the judge's pass@k
    rows = (get(judge.outputs["data"]).local_path() / "rows.jsonl").read_text().splitlines()
    assert len(rows) == kept

    for step, role in (("sft.train", "sft"), ("rl.train", "rl"), ("dpo.train", "dpo")):
        rec = res.records[step]
        load_hf(get(rec.outputs["model"]).local_path())
        assert rec.models.get("model")
        report = json.loads((get(rec.outputs["report"]).local_path() / "vs_parent.json").read_text())
        assert len(report["items"]["arithmetic"]) == len(report["items"]["arithmetic_parent"]) == post.eval_items
        metrics = client.get_run(rec.run_id).data.metrics
        assert "vs_parent.arithmetic.mcnemar_p" in metrics and "loss" in metrics, (step, sorted(metrics))
        assert client.get_logged_model(rec.models["model"]).tags.get("herd.role", role) == role

    rl_metrics = client.get_run(res.records["rl.train"].run_id).data.metrics
    for key in ("rollout/reward", "rollout.zero_var_frac", "rollout.groups_kept", "rollout.logp_gap.max",
                "rollout.ledger.medium", "rollout.pass_rate.arithmetic"):
        assert key in rl_metrics, key
    assert rl_metrics["rollout.logp_gap.max"] < 1e-3
    # the RL ledger: input rows carried over, RL pool attempted further
    rl_rec = res.records["rl.train"]
    out = {json.loads(x)["prompt_id"]: json.loads(x) for x in
           (get(rl_rec.outputs["ledger"]).local_path() / "ledger.jsonl").read_text().splitlines()}
    assert set(out) == {e["prompt_id"] for e in ledger}
    assert sum(out[e["prompt_id"]]["attempts"] for e in rl_rows) > sum(e["attempts"] for e in rl_rows)

    dpo_metrics = client.get_run(res.records["dpo.train"].run_id).data.metrics
    assert {"margin", "accuracy", "dpo_loss"} <= set(dpo_metrics)
    pairs = (get(res.records["dpo.train"].outputs["pairs"]).local_path() / "pairs.jsonl").read_text()
    assert all("ref_chosen" in json.loads(x) for x in pairs.splitlines())

    # lineage: the DPO model goes up through RL and SFT to the distilled student and the judge's ledger
    tree = LineageReader(finished_pipeline.tracking_uri).up(res.records["dpo.train"].outputs["model"])
    assert {"dpo.train", "rl.train", "sft.train", "sft.judge", "distill.train"} <= set(steps_in(tree))

