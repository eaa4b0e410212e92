"""The pretrain and distill flows end to end on a real local Ray, Ray Train (2 workers) and MLflow (sqlite):
losses fall, metrics and plots reach MLflow from the driver, models are LoggedModels with lineage to the shards,
the tokenizer and (student) the teacher (read from the session's finished ``test`` pipeline, tests/conftest.py
``finished_pipeline``); a second run reuses both steps, and ``--force`` retrains to the identical digest (a small
pipeline of its own, since it writes)."""

from __future__ import annotations

import math

import pytest
from mlflow.tracking import MlflowClient

from herd.cli import pipeline_steps
from herd.model import load_hf
from herd.platform.config import RuntimeConfig, load_recipe
from herd.platform.lineage import LineageReader, steps_in
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime
from herd.platform.store import ArtifactStore

pytestmark = pytest.mark.slow

# the force/reuse check trains twice: the `test` recipe with a handful of steps is enough to compare digests
FEW_STEPS = [f"{s}.{k}={v}" for s in ("pretrain", "distill") for k, v in (
    ("steps", 6), ("log_every", 3), ("checkpoint.every_steps", 6), ("schedule.warmup_steps", 2), ("eval_batches", 1))]


def test_pretrain_then_distill(finished_pipeline):
    res = finished_pipeline.result
    assert {"pretrain.train", "distill.train"} <= set(res.executed)
    client = MlflowClient(finished_pipeline.tracking_uri)
    store = ArtifactStore(finished_pipeline.store)
    train = finished_pipeline.recipe.pretrain
    assert (train.steps, train.log_every, train.checkpoint.every_steps) == (30, 10, 15)  # test.yaml, read below

    for step in ("pretrain.train", "distill.train"):
        rec = res.records[step]
        model_art = store.get(rec.outputs["model"])
        model_dir = model_art.local_path()
        summary = model_art.manifest.meta["training"]  # run metadata: in the manifest, not the hashed files
        assert summary["resumed_from"] is None and summary["run_name"].startswith(step.replace(".", "-"))
        assert not (model_dir / "training.json").exists()
        # training reports (the LoggedModel's summary adds the final values at step 0: leave those out)
        history = [m for m in client.get_metric_history(rec.run_id, "ce") if m.step > 0]
        losses = [m.value for m in history]
        # every log_every steps, plus the checkpoint step 15 (a report carries the checkpoint)
        assert [m.step for m in history] == [10, 15, 20, 30]
        # a fresh model predicts ~uniformly: CE = ln(1024) = 6.93; 30 small steps must get well below that
        assert losses[-1] < losses[0] and losses[-1] < 0.7 * math.log(1024), (step, losses)
        run = client.get_run(rec.run_id)
        for key in ("lr", "grad_norm", "tokens_per_s", "mfu", "eval/loss", "moe.layer1.entropy",
                    "moe.layer1.load_e0", "moe.layer1.imbalance"):
            assert key in run.data.metrics, (step, key)
        assert 0 < run.data.metrics["mfu"] < 1
        plots = {a.path for a in client.list_artifacts(rec.run_id, "plots")}
        assert plots == {"plots/loss_curve.png", "plots/expert_load.png"}
        assert (model_dir / "tokenizer.json").exists()
        load_hf(model_dir)  # a transformers-format Llama 4 checkpoint herd (and transformers) can load

    distill_metrics = client.get_run(res.records["distill.train"].run_id).data.metrics
    assert 0 < distill_metrics["alpha"] < 1 and distill_metrics["kl"] >= 0 and "teacher_ce" in distill_metrics

    # lineage: the student's LoggedModel goes up to the teacher's step, the packed shards and the tokenizer
    student = res.records["distill.train"].outputs["model"]
    assert res.records["distill.train"].models.get("model")
    tree = LineageReader(finished_pipeline.tracking_uri).up(student)
    assert {"distill.train", "pretrain.train", "data.pack", "data.tokenizer"} <= set(steps_in(tree))
    run_inputs = client.get_run(res.records["distill.train"].run_id).inputs
    teacher_model_id = res.records["pretrain.train"].models["model"]
    assert teacher_model_id in {m.model_id for m in run_inputs.model_inputs}


def test_rerun_reuses_and_force_retrains_to_the_same_digest(ray_local, herd_home):
    recipe = load_recipe("test", FEW_STEPS)
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=False)
    try:
        steps = pipeline_steps(recipe, ["distill"])
        res = runner.run(steps, ["distill.train"])
        assert {"pretrain.train", "distill.train"} <= set(res.executed)
        client = MlflowClient(runner.rt.tracking_uri)

        again = runner.run(steps, ["distill.train"])
        assert again.executed == [] and again.outputs["distill.train"] == res.outputs["distill.train"]

        # --force: pretrain re-trains from scratch under a fresh Ray Train run; identical weights give the identical
        # digest (no run metadata in the model directory), so distill is reused
        forced = runner.run(steps, ["distill.train"], force=["pretrain.train"])
        assert forced.executed == ["pretrain.train"] and "distill.train" in forced.reused
        assert forced.outputs["pretrain.train"]["model"] == res.outputs["pretrain.train"]["model"]
        tags = [client.get_run(r.records["pretrain.train"].run_id).data.tags for r in (res, forced)]
        assert tags[1]["herd.train.run_name"].startswith(tags[0]["herd.train.run_name"] + "-")
        assert tags[1]["herd.train.resumed_from"] == ""  # from scratch, not resumed from the finished run
    finally:
        runner.rt.stop()
