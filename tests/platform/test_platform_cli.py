"""The CLI on a registered demo flow (in-process, on the session's Ray) and on an S3 store."""

from __future__ import annotations

import json
from pathlib import Path

import demo_flow
import pytest
from typer.testing import CliRunner

from herd import flows
from herd.cli import app
from herd.platform.config import RuntimeConfig
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime

cli = CliRunner()


@pytest.fixture
def demo_registered(monkeypatch, tmp_path: Path) -> Path:
    src = tmp_path / "raw.txt"
    src.write_text("2 4 6")
    monkeypatch.setattr(flows, "FLOWS", {"demo": demo_flow.build_from_recipe(str(src))})
    return src


def test_flow_plan_run_through_the_cli(ray_local, herd_home, demo_registered):
    res = cli.invoke(app, ["plan"])
    assert res.exit_code == 0, res.output
    assert "never ran" in res.output
    assert not herd_home.exists()  # plan reads only

    res = cli.invoke(app, ["flow", "demo"])
    assert res.exit_code == 0, res.output
    assert "2 step(s) ran, 0 reused" in res.output

    res = cli.invoke(app, ["plan", "--json", "--set", "posttrain.rl.temperature=0.5"])
    assert res.exit_code == 0, res.output
    plan = {e["step"]: e for e in json.loads(res.output)}
    assert plan["demo.make"]["action"] == "reuse"
    assert plan["demo.train"]["action"] == "run"
    assert plan["demo.train"]["reasons"] == ["config posttrain.rl.temperature: 1.0 -> 0.5"]

    res = cli.invoke(app, ["run", "--set", "posttrain.rl.temperature=0.5"])
    assert res.exit_code == 0, res.output
    assert "1 step(s) ran, 1 reused" in res.output

    flows.FLOWS["broken"] = "herd.flows.not_written:build"  # a registry entry whose module does not import
    res = cli.invoke(app, ["flow", "demo"])
    assert res.exit_code == 1 and "flow 'broken' is registered" in res.output and "cannot be imported" in res.output
    res = cli.invoke(app, ["flow", "nope"])
    assert res.exit_code == 1 and "unknown flow 'nope'" in res.output


def test_demo_on_s3_store(ray_local, herd_home, s3_uri, tmp_path):
    src = tmp_path / "raw.txt"
    src.write_text("1 1 1")
    rt = Runtime(RuntimeConfig(home=str(herd_home)), store=s3_uri)
    runner = Runner(rt)
    first = runner.run(demo_flow.steps(str(src)))
    assert first.executed == ["demo.make", "demo.train"]
    model = runner.store.get(first.outputs["demo.train"]["model"])
    assert model.uri.startswith(s3_uri)
    assert json.loads((model.local_path() / "weights.json").read_text())["w"] == pytest.approx(0.6)
    assert runner.store.exists(f"steps/demo.train/{first.records['demo.train'].key}.json")
    again = runner.run(demo_flow.steps(str(src)))
    assert again.reused == ["demo.make", "demo.train"]
    assert not (herd_home / "artifacts").exists()  # everything went to S3
