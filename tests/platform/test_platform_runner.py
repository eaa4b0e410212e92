"""Runner on the two-step demo flow: run, reuse, config change, plan reasons, kill + resume, failure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import demo_flow
import pytest

from herd.platform.config import RuntimeConfig
from herd.platform.errors import StepFailed
from herd.platform.runner import Runner, order_steps
from herd.platform.runtime import Runtime
from herd.platform.store import ArtifactStore


@pytest.fixture
def source(tmp_path: Path) -> str:
    p = tmp_path / "raw.txt"
    p.write_text("1 2 3 4 5")
    return str(p)


def runner_for(home: Path, **kw) -> Runner:
    return Runner(Runtime(RuntimeConfig(home=str(home)), **kw), progress=True)


def test_run_reuse_and_config_change(ray_local, herd_home, source):
    r = runner_for(herd_home)
    first = r.run(demo_flow.steps(source))
    assert first.executed == ["demo.make", "demo.train"] and first.reused == []
    model = r.store.get(first.outputs["demo.train"]["model"])
    assert json.loads((model.local_path() / "weights.json").read_text())["w"] == pytest.approx(3 * 0.1 * 6)
    assert model.manifest.parents == [first.outputs["demo.make"]["numbers"]]

    t0 = time.monotonic()
    second = r.run(demo_flow.steps(source))
    assert second.reused == ["demo.make", "demo.train"] and second.executed == []
    assert time.monotonic() - t0 < 10
    assert second.outputs == first.outputs

    changed = demo_flow.steps(source, train_cfg={"lr": 0.2})
    plan = {e.step: e for e in r.plan(changed)}
    assert plan["demo.make"].action == "reuse"
    assert plan["demo.train"].action == "run"
    assert plan["demo.train"].reasons == ["config demo.train.lr: 0.1 -> 0.2"]
    third = r.run(changed)
    assert third.reused == ["demo.make"] and third.executed == ["demo.train"]

    # An upstream change: plan says the downstream runs because of it, and names the field.
    up = demo_flow.steps(source, make_cfg={"scale": 3}, train_cfg={"lr": 0.2})
    plan = {e.step: e for e in r.plan(up)}
    assert plan["demo.make"].reasons == ["config demo.make.scale: 2 -> 3"]
    assert plan["demo.train"].action == "run" and "upstream demo.make" in plan["demo.train"].reasons[0]

    # MLflow: one flow run per execution with nested step runs, params and metrics from the Ray task.
    client = r.lineage.client
    rec = third.records["demo.train"]
    run = client.get_run(rec.run_id)
    assert run.data.tags["mlflow.parentRunId"] == third.flow_runs["demo"]
    assert run.data.params["demo.train.lr"] == "0.2"
    # the three reports (the LoggedModel's summary may repeat the final value after them)
    assert [m.value for m in client.get_metric_history(rec.run_id, "w")][:3] == pytest.approx([1.2, 2.4, 3.6])
    assert run.info.status == "FINISHED"


def test_failing_step_is_reported_and_rerun(ray_local, herd_home, source, tmp_path):
    r = runner_for(herd_home)
    bad = tmp_path / "bad.txt"
    bad.write_text("1 two 3")
    with pytest.raises(StepFailed, match=r"demo.make failed: ValueError: invalid literal"):
        r.run(demo_flow.steps(str(bad)))
    assert r.store.artifacts() == []  # nothing committed by the failed step
    bad.write_text("1 2 3")
    res = r.run(demo_flow.steps(str(bad)))
    assert res.executed == ["demo.make", "demo.train"]


def test_targets_run_only_what_is_needed(ray_local, herd_home, source):
    r = runner_for(herd_home)
    res = r.run(demo_flow.steps(source), targets=["demo.make"])
    assert res.executed == ["demo.make"]
    assert [s.name for s in order_steps(demo_flow.steps(source), ["demo.train"])] == ["demo.make", "demo.train"]
    plan = r.plan(demo_flow.steps(source), targets=["demo.train"])
    assert [(e.step, e.action, e.reasons) for e in plan] == [
        ("demo.make", "reuse", plan[0].reasons), ("demo.train", "run", ["never ran"])]


def test_killed_during_step_2_resumes(ray_local, herd_home, source):
    script = Path(demo_flow.__file__)
    cmd = [sys.executable, str(script), str(herd_home), ray_local.address, source, "12", "0.5"]
    env = dict(os.environ, PYTHONPATH=str(script.parent))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    store = ArtifactStore(herd_home / "artifacts")
    deadline = time.monotonic() + 120
    ckpts = herd_home / "artifacts" / "checkpoints" / "demo.train"
    while time.monotonic() < deadline:
        states = list(ckpts.glob("*/state.json"))
        if states and json.loads(states[0].read_text())["it"] >= 3:
            break
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        time.sleep(0.2)
    else:
        pytest.fail("step 2 never checkpointed")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(states[0].read_text())["it"]
    assert killed_at < 12
    # step 1 finished and is recorded; step 2 left no artifact (and nothing half-visible)
    assert (herd_home / "artifacts" / "steps" / "demo.make" / "latest.json").exists()
    # (only the killed driver's lease is left; its holder is gone, so the next run takes it over)
    assert [p.name for p in (herd_home / "artifacts" / "steps" / "demo.train").iterdir()] == ["LEASE.json"]
    assert [a.kind for a in store.artifacts()] == ["dataset"]

    r = runner_for(herd_home)
    res = r.run(demo_flow.steps(source, train_cfg={"iterations": 12, "sleep_s": 0.5}))
    assert res.reused == ["demo.make"] and res.executed == ["demo.train"]
    model = r.store.get(res.outputs["demo.train"]["model"])
    progress = json.loads((model.local_path() / "progress.json").read_text())
    assert progress["resumed_from"] >= killed_at  # continued from its checkpoint, not from 0
    assert sorted(a.kind for a in store.artifacts()) == ["dataset", "model"]
    assert store.incomplete() == []
