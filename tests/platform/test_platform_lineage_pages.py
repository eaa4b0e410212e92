"""What a user sees in MLflow, checked through MlflowClient (REST-level): flow runs with the resolved recipe
(secrets redacted), Source, params and a summary; step outputs visible from their run; datasets with a profile
and a schema; LoggedModels named by role with params, metrics tied to datasets, a parent and children, files;
the Model Registry (a version per digest, an alias); reused steps re-recorded after --tracking-uri changes;
lineage searches that page past MLflow's page size; links that open the runs view.

A small in-driver flow (no Ray Train) keeps these tests fast; tests/ui checks the same on the real pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mlflow import MlflowClient
from pydantic import BaseModel

from herd.platform import lineage_read
from herd.platform.config import RuntimeConfig, load_recipe
from herd.platform.lineage import LineageReader, steps_in
from herd.platform.registry import ALIAS, resolve_registered
from herd.platform.runner import Resources, Runner, Step, StepContext
from herd.platform.runtime import Runtime

SECRET = "hunter2-very-secret-value"


def make_data(ctx: StepContext) -> None:
    for name, n in (("train", 6), ("val", 2)):
        out = ctx.output_dir(name, format="parquet", rows=n, tokens=n * 4)
        table = pa.table({"input_ids": pa.array([[i, i + 1, i + 2, i + 3] for i in range(n)],
                                                pa.list_(pa.int32())),
                          "loss_mask": pa.array([[1, 1, 1, 0]] * n, pa.list_(pa.uint8()))})
        pq.write_table(table, out / "shard-00000.parquet")
    tok = ctx.output_dir("tokenizer", format="hf-tokenizer", vocab_size=16)
    (tok / "tokenizer.json").write_text("{}")


def train(ctx: StepContext) -> None:
    rows = pq.read_table(ctx.inputs["shards"].local_path() / "shard-00000.parquet").num_rows
    parent = ctx.inputs.get("teacher")
    base = json.loads((parent.local_path() / "w.json").read_text())["w"] if parent else 0.0
    ctx.log_params({"params": 1234, "active_params": 617})
    for step in (1, 2):
        ctx.log_metrics({"loss": 3.0 / step, "ce": 3.1 / step, "lr": 0.01, "eval/loss": 3.5 / step,
                         "moe/layer1/load_e0": 0.5}, step=step)
    out = ctx.output_dir("model", format="json")
    (out / "w.json").write_text(json.dumps({"w": base + rows * ctx.config.lr}))


class TrainCfg(BaseModel):
    lr: float = 0.5


def pipeline(lr: float = 0.5) -> list[Step]:
    common = {"resources": Resources(cpus=0), "in_driver": True}
    return [
        Step("uidata.make", make_data, outputs={"train": "dataset", "val": "dataset", "tokenizer": "tokenizer"},
             description="make two parquet shard sets and a tokenizer", **common),
        Step("uitrain.teacher", train, config=TrainCfg(lr=lr), config_path="pretrain",
             inputs={"shards": "uidata.make.train", "val": "uidata.make.val", "tokenizer": "uidata.make.tokenizer"},
             outputs={"model": "model"}, roles={"model": "teacher"}, description="train the teacher", **common),
        Step("uitrain.student", train, config=TrainCfg(lr=lr / 2), config_path="distill",
             inputs={"shards": "uidata.make.train", "val": "uidata.make.val", "teacher": "uitrain.teacher.model"},
             outputs={"model": "model"}, roles={"model": "student"}, description="distill the student", **common),
    ]


@pytest.fixture
def ran(ray_local, herd_home):
    recipe = load_recipe("test", [f"runtime.home={herd_home}", f"runtime.storage_options.secret={SECRET}"])
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=False)
    res = runner.run(pipeline(), recipe=recipe)
    return runner, res, recipe, MlflowClient(runner.rt.tracking_uri)


def test_flow_run_carries_recipe_source_params_and_summary(ran, herd_home):
    runner, res, recipe, client = ran
    flow_run = client.get_run(res.flow_runs["uitrain"])
    text = client.download_artifacts(flow_run.info.run_id, "recipe.yaml", str(herd_home / "dl"))
    body = Path(text).read_text()
    assert "secret: '***'" in body and SECRET not in body and "vocab_size: 1024" in body  # resolved test recipe
    assert flow_run.data.tags["mlflow.source.name"] and flow_run.data.tags["mlflow.source.type"] == "LOCAL"
    assert flow_run.data.params["recipe"] == "test"
    assert flow_run.data.params["pretrain.lr"] == "0.5" and flow_run.data.params["distill.lr"] == "0.25"
    assert flow_run.data.metrics["steps_ran"] == 2 and flow_run.data.metrics["steps_reused"] == 0
    assert flow_run.data.metrics["teacher/eval/loss"] == pytest.approx(1.75)
    note = flow_run.data.tags["mlflow.note.content"]
    assert "ran **uitrain.teacher**" in note and res.records["uitrain.teacher"].run_id in note
    assert flow_run.data.tags["herd.ray.job_id"] and flow_run.data.tags["herd.ray.dashboard"].startswith("http")
    step_run = client.get_run(res.records["uitrain.student"].run_id)
    assert step_run.data.tags["mlflow.note.content"] == "distill the student"
    assert step_run.data.tags["herd.ray.job_id"] == flow_run.data.tags["herd.ray.job_id"]
    # no secret anywhere in MLflow's database (tags, params, the recipe source)
    assert SECRET.encode() not in (herd_home / "mlflow.db").read_bytes()

    # a second run reuses everything, creates no runs, and a partial re-run lists what it reused
    again = runner.run(pipeline(), recipe=recipe)
    assert again.executed == [] and again.flow_runs == {}
    third = runner.run(pipeline(lr=0.5)[:2] + [_with_lr(pipeline()[2], 0.3)], recipe=recipe)
    assert third.executed == ["uitrain.student"]
    summary = client.get_run(third.flow_runs["uitrain"])
    assert summary.data.metrics["steps_reused"] == 1
    assert "reused **uitrain.teacher**" in summary.data.tags["mlflow.note.content"]


def _with_lr(step: Step, lr: float) -> Step:
    step.config = TrainCfg(lr=lr)
    return step


def test_step_outputs_and_datasets_have_profile_and_schema(ran):
    _, res, _, client = ran
    make = client.get_run(res.records["uidata.make"].run_id)
    outs = {d.dataset.name: d for d in make.inputs.dataset_inputs}
    assert set(outs) == {"uidata.make.train", "uidata.make.val"}  # the tokenizer is not a dataset
    ctx = {t.key: t.value for t in outs["uidata.make.train"].tags}
    assert ctx["mlflow.data.context"] == "output"
    assert make.data.tags["herd.output.tokenizer"].startswith(res.outputs["uidata.make"]["tokenizer"])
    teacher = client.get_run(res.records["uitrain.teacher"].run_id)
    (ds,) = [d.dataset for d in teacher.inputs.dataset_inputs if d.dataset.name == "uidata.make.train"]
    assert json.loads(ds.profile)["rows"] == 6 and json.loads(ds.profile)["tokens"] == 24
    cols = {c["name"]: c["type"] for c in json.loads(ds.schema)["mlflow_colspec"]}
    assert cols == {"input_ids": "list<int32>", "loss_mask": "list<uint8>"}
    names = {d.dataset.name for d in teacher.inputs.dataset_inputs}
    assert names == {"uidata.make.train", "uidata.make.val"}  # no tokenizer, no model among datasets
    assert teacher.data.tags["herd.input.tokenizer"].startswith("uidata.make.tokenizer ")


def test_models_are_named_by_role_with_params_metrics_parent_files_and_registry(ran, herd_home):
    runner, res, _, client = ran
    teacher_id = res.records["uitrain.teacher"].models["model"]
    student_id = res.records["uitrain.student"].models["model"]
    t, s = client.get_logged_model(teacher_id), client.get_logged_model(student_id)
    assert (t.name, s.name) == ("test-teacher", "test-student")
    assert s.params["params"] == "1234" and s.params["distill.lr"] == "0.25"
    assert s.params["parent_model"] == f"test-teacher ({teacher_id})"
    metrics = {m.key: m for m in s.metrics}
    assert metrics["eval/loss"].value == pytest.approx(1.75) and metrics["loss"].value == pytest.approx(1.5)
    assert metrics["eval/loss"].dataset_name == "uidata.make.val"
    assert metrics["loss"].dataset_name == "uidata.make.train"
    assert not any(k.startswith("moe/") for k in metrics)
    # the model's metrics are the run's last points: its charts gain no point (no step-0 copy of the final value)
    assert [m.step for m in client.get_metric_history(res.records["uitrain.student"].run_id, "loss")] == [1, 2]
    assert metrics["loss"].step == 2
    assert s.tags["herd.parent"] == teacher_id and t.tags["herd.child.test-student"] == student_id
    assert "test-student" in t.tags["mlflow.note.content"]
    files = {f.path for f in client.list_logged_model_artifacts(student_id)}
    assert {"w.json", "HERD_STORE.md"} <= files
    # the step run does not list its own model as an input (no self-link)
    assert [m.model_id for m in client.get_run(res.records["uitrain.student"].run_id).inputs.model_inputs] \
        == [teacher_id]

    # registry: one registered model per role, a version per digest, the alias on the newest
    ref = resolve_registered(runner.rt.tracking_uri, f"models:/test-student@{ALIAS}")
    assert ref.digest == res.outputs["uitrain.student"]["model"] and ref.model_id == student_id
    assert resolve_registered(runner.rt.tracking_uri, "models:/test-student@latest").version == "1"
    # `herd serve models:/NAME@ALIAS` and the flows resolve models through modelref
    from herd.platform.modelref import ModelRefError, resolve_model

    mref = resolve_model(f"models:/test-student@{ALIAS}", runner.store, tracking_uri=runner.rt.tracking_uri)
    assert mref.artifact.digest == ref.digest
    with pytest.raises(ModelRefError, match="test-student"):
        resolve_model("models:/nope@newest", runner.store, tracking_uri=runner.rt.tracking_uri)
    recipe = load_recipe("test", [f"runtime.home={herd_home}"])
    new = runner.run(pipeline()[:2] + [_with_lr(pipeline()[2], 0.3)], recipe=recipe)
    ref2 = resolve_registered(runner.rt.tracking_uri, f"models:/test-student@{ALIAS}")
    assert ref2.version == "2" and ref2.digest == new.outputs["uitrain.student"]["model"] != ref.digest
    assert [str(v.version) for v in client.search_model_versions("name = 'test-teacher'")] == ["1"]


def test_reused_steps_are_relinked_after_tracking_uri_changes(ran, herd_home):
    runner, res, recipe, _ = ran
    other = f"sqlite:///{herd_home / 'other.db'}"
    rt2 = Runtime(RuntimeConfig(home=str(herd_home)), tracking_uri=other)
    res2 = Runner(rt2, progress=False).run(pipeline(), recipe=recipe)
    assert res2.executed == [] and set(res2.reused) == {s.name for s in pipeline()}
    student = res.outputs["uitrain.student"]["model"]
    tree = LineageReader(other).up(student)
    assert set(steps_in(tree)) == {"uitrain.student", "uitrain.teacher", "uidata.make"}  # no dead end
    assert tree["made_by"]["inputs"]["teacher"]["made_by"]["step"] == "uitrain.teacher"
    c2 = MlflowClient(other)
    run = c2.get_run(tree["made_by"]["run_id"])
    assert run.data.tags["herd.reused_from_run"] == res.records["uitrain.student"].run_id
    assert run.data.tags["herd.reused_from_tracking_uri"] == runner.rt.tracking_uri
    assert c2.get_logged_model(tree["model_id"]).name == "test-student"
    # the next cached run finds its producers in this MLflow and records nothing new
    n_runs = len(c2.search_runs([c2.get_experiment_by_name("herd").experiment_id]))
    Runner(rt2, progress=False).run(pipeline(), recipe=recipe)
    assert len(c2.search_runs([c2.get_experiment_by_name("herd").experiment_id])) == n_runs


def test_lineage_searches_page_past_the_page_size(ran, monkeypatch):
    runner, res, _, _ = ran
    monkeypatch.setattr(lineage_read, "PAGE", 2)  # MLflow's real page is 1000 runs: same loop, smaller pages
    reader = LineageReader(runner.rt.tracking_uri)
    assert len(reader._runs("")) == len(runner.lineage.client.search_runs([reader.experiment_id])) > 2
    student = res.outputs["uitrain.student"]["model"]
    assert set(steps_in(reader.up(student))) == {"uitrain.student", "uitrain.teacher", "uidata.make"}


def test_links_open_the_runs_view(ran):
    runner, res, _, _ = ran
    exp = runner.lineage.experiment_id
    assert runner.lineage.experiment_url() == \
        f"http://127.0.0.1:5000/#/experiments/{exp}/runs?workflowType=machine_learning"
    run_id = res.records["uidata.make"].run_id
    assert runner.lineage.run_url(run_id) == f"http://127.0.0.1:5000/#/experiments/{exp}/runs/{run_id}"


def test_a_step_that_fails_while_recording_its_outputs_leaves_no_model(ray_local, herd_home, monkeypatch):
    """Issue 13: a LoggedModel exists only for a step run that FINISHED. A failure while the outputs are recorded
    (MLflow refusing a write) fails the step and deletes the model it had created; a model an earlier, killed
    attempt left behind (its run never finished) is deleted by the next attempt, which holds the step's lease."""
    from herd.platform import model_metrics
    from herd.platform.errors import StepFailed

    recipe = load_recipe("test", [f"runtime.home={herd_home}"])
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=False)
    client = MlflowClient(runner.rt.tracking_uri)
    exp = runner.lineage.experiment_id
    # what a driver killed while recording leaves: a RUNNING step run with a model (and a registry version)
    dead_run = client.create_run(exp, run_name="uitrain.teacher", tags={"herd.step": "uitrain.teacher"}).info.run_id
    dead = client.create_logged_model(exp, name="test-teacher", source_run_id=dead_run,
                                      tags={"herd.step": "uitrain.teacher", "herd.digest": "0" * 64}).model_id

    real = model_metrics.attach_output_metrics

    def refuse(client, experiment_id, run_id, outputs):  # MLflow refuses a write once the teacher's model exists
        if any(a.kind == "model" for a in outputs.values()):
            raise RuntimeError("MLflow refused the write")
        return real(client, experiment_id, run_id, outputs)

    monkeypatch.setattr(model_metrics, "attach_output_metrics", refuse)
    with pytest.raises(StepFailed, match="uitrain.teacher.*MLflow refused the write"):
        runner.run(pipeline(), recipe=recipe)
    failed = client.search_runs([exp], "tags.`herd.step` = 'uitrain.teacher' and attributes.status = 'FAILED'")
    assert len(failed) == 1 and "MLflow refused the write" in failed[0].data.tags["herd.error"]
    # the failed attempt's own model was rolled back, the dead attempt's deleted by the attempt holding the lease
    assert list(client.search_logged_models([exp])) == []
    assert list(client.search_registered_models(filter_string="name = 'test-teacher'")) == []

    monkeypatch.undo()
    monkeypatch.setenv("HERD_HOME", str(herd_home))
    res = runner.run(pipeline(), recipe=recipe)
    assert res.executed == ["uitrain.teacher", "uitrain.student"]
    teacher = res.records["uitrain.teacher"]
    models = {m.name: m for m in client.search_logged_models([exp])}
    assert set(models) == {"test-teacher", "test-student"} and models["test-teacher"].model_id != dead
    assert models["test-teacher"].source_run_id == teacher.run_id
    for m in models.values():  # every model left was made by a run that finished
        assert client.get_run(m.source_run_id).info.status == "FINISHED" and str(m.status).endswith("READY")
    assert resolve_registered(runner.rt.tracking_uri, f"models:/test-teacher@{ALIAS}").model_id == \
        models["test-teacher"].model_id


def test_printed_links_open_where_something_serves_them(ran, mlflow_server, capsys):
    """Issue 13: a link herd prints for a sqlite store opens only once `herd ui` serves it, so herd prints that
    command (with the recipe and runtime overrides `herd ui` needs) unless an MLflow already serves the store."""
    from herd.platform import mlflow_views as views
    from herd.platform.lineage import LineageRecorder

    runner, res, _, _ = ran
    flow_run = res.flow_runs["uitrain"]
    line = runner.lineage.where_to_look(flow_run, "test --set runtime.home=/x --set pretrain.steps=3")
    assert line == (f"MLflow: {runner.lineage.experiment_url()} "
                    "(run `herd ui --recipe test --set runtime.home=/x` to serve it)")
    assert views.ui_command("tiny --set runtime.storage_options.secret=***") == "herd ui"
    assert views.serves(views.UI_DEFAULT.replace("5000", "9"), flow_run) is False  # nothing listens on port 9
    # an MLflow server that does not hold this run is not "serving it"; one that does is (its link opens)
    assert views.serves(mlflow_server, flow_run) is False
    remote = LineageRecorder(mlflow_server, f"links-{flow_run[:8]}")
    other = remote.start_flow_run("uitrain", {})
    assert views.serves(mlflow_server, other) is True
    assert remote.where_to_look(other) == f"MLflow: {remote.experiment_url()}"
    assert remote.experiment_url().startswith(mlflow_server + "/#/experiments/")
