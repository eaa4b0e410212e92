"""Lineage walk up and down on the demo flow, from MLflow on sqlite and from a real `mlflow server`."""

from __future__ import annotations

import json
from pathlib import Path

import demo_flow
import pytest
from typer.testing import CliRunner

from herd.cli import app
from herd.platform.config import RuntimeConfig
from herd.platform.lineage import LineageReader, render_text, steps_in, to_mermaid
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime


@pytest.fixture(params=["sqlite", "server"])
def tracking(request) -> str | None:
    return request.getfixturevalue("mlflow_server") if request.param == "server" else None


def test_walk_up_and_down_returns_exactly_what_ran(ray_local, herd_home, tmp_path, tracking, monkeypatch):
    src = tmp_path / "raw.txt"
    src.write_text("3 4 5")
    experiment = f"lineage-{tmp_path.name}"  # the session's server is shared: keep runs apart
    rt = Runtime(RuntimeConfig(home=str(herd_home), experiment=experiment), tracking_uri=tracking)
    runner = Runner(rt)
    res = runner.run(demo_flow.steps(str(src)))
    numbers, model = res.outputs["demo.make"]["numbers"], res.outputs["demo.train"]["model"]
    make_run, train_run = res.records["demo.make"].run_id, res.records["demo.train"].run_id
    model_id = res.records["demo.train"].models["model"]
    assert model_id.startswith("m-")

    reader = LineageReader(rt.tracking_uri, experiment)
    up = reader.up(model_id)  # by LoggedModel id
    assert up["digest"] == model and up["model_id"] == model_id and up["name"] == "demo.train.model"
    assert up["made_by"]["run_id"] == train_run and up["made_by"]["step"] == "demo.train"
    parent = up["made_by"]["inputs"]["numbers"]
    assert parent["digest"] == numbers and parent["made_by"]["run_id"] == make_run
    assert parent["made_by"]["inputs"] == {}
    (source,) = parent["made_by"]["sources"]
    assert source["uri"] == str(src) and source["name"] == "raw-numbers"
    assert steps_in(up) == ["demo.train", "demo.make"]
    assert reader.up(model[:12]) == up  # by digest prefix
    assert reader.up(train_run) == up  # by the step run id

    down = reader.down(numbers)
    assert [r["run_id"] for r in down["used_by"]] == [train_run]
    assert down["used_by"][0]["outputs"]["model"]["digest"] == model
    assert steps_in(down) == ["demo.train"]
    assert reader.down(model)["used_by"] == []

    # MLflow itself records the links: model output of the producing run, dataset inputs with digests
    client = runner.lineage.client
    lm = client.get_logged_model(model_id)
    assert lm.source_run_id == train_run
    assert [o.model_id for o in client.get_run(train_run).outputs.model_outputs] == [model_id]
    ds = client.get_run(train_run).inputs.dataset_inputs
    assert [(d.dataset.name, d.dataset.digest) for d in ds] == [("demo.make.numbers", numbers[:32])]
    src_inputs = client.get_run(make_run).inputs.dataset_inputs  # its raw source, and its output (context)
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in src_inputs}
    assert contexts == {"raw-numbers": "source", "demo.make.numbers": "output"}

    text = render_text(up)
    assert "made by step demo.train" in text and f"source {src}" in text
    mer = to_mermaid(up)
    assert mer.startswith("graph LR") and '("demo.make")' in mer and "-->" in mer

    # the CLI prints the same tree (json) for the same runtime
    if tracking:
        monkeypatch.setenv("HERD_HOME", str(herd_home))
        out = CliRunner().invoke(app, ["lineage", model_id, "--format", "json", "--tracking-uri", tracking,
                                       "--set", f"runtime.experiment={experiment}"])
        assert out.exit_code == 0, out.output
        assert json.loads(out.output) == up


def test_model_inputs_link_consumers(ray_local, herd_home, tmp_path):
    """A step consuming a model output gets it as an MLflow LoggedModel input."""
    from herd.platform.runner import Step

    src = tmp_path / "raw.txt"
    src.write_text("1 2")
    steps = demo_flow.steps(str(src)) + [
        Step("demo.eval", demo_flow.evaluate, inputs={"model": "demo.train.model"}, outputs={"report": "report"},
             resources=demo_flow.Resources(cpus=0.5))]
    rt = Runtime(RuntimeConfig(home=str(herd_home)))
    runner = Runner(rt)
    res = runner.run(steps)
    model_id = res.records["demo.train"].models["model"]
    run = runner.lineage.client.get_run(res.records["demo.eval"].run_id)
    assert [m.model_id for m in run.inputs.model_inputs] == [model_id]
    down = LineageReader(rt.tracking_uri).down(model_id)
    assert steps_in(down) == ["demo.eval"]
    up = LineageReader(rt.tracking_uri).up(res.outputs["demo.eval"]["report"])
    assert steps_in(up) == ["demo.eval", "demo.train", "demo.make"]
    assert Path(runner.store.get(res.outputs["demo.eval"]["report"]).local_path() / "report.json").exists()
