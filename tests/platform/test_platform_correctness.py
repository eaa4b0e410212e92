"""Platform correctness (issue 8): cache keys cover the code and the environment, --force re-runs for real and a
crashed forced run is never hidden by the old record, tracebacks reach the user, leases keep two runs off one
step, a failing MLflow call drops no metric, a committed artifact is never deleted under a reader, and
Step(verify_reuse=...) re-runs a step whose side effect is gone."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray.cloudpickle
from mlflow.tracking import MlflowClient
from pydantic import BaseModel, ConfigDict
from typer.testing import CliRunner

import herd
from herd import flows
from herd.cli import app
from herd.platform import cache
from herd.platform.config import RuntimeConfig, load_recipe
from herd.platform.errors import StepFailed
from herd.platform.lease import LeaseHeld, StepLease
from herd.platform.runner import Runner, Step, StepContext, order_steps, summarize
from herd.platform.runtime import Runtime
from herd.platform.store import ArtifactStore

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
REPO = Path(herd.__file__).resolve().parent.parent


# ------------------------------------------------------------------------ cache keys: code closure + env
def trainer_steps():
    from herd.flows import data, distill, pretrain

    recipe = load_recipe("tiny")
    return data.build(recipe) + pretrain.build(recipe) + distill.build(recipe)


def fake_finished(store: ArtifactStore, steps, tmp: Path) -> None:
    """Records + committed outputs for every step, as if the pipeline had run with the current code."""
    known: dict[str, dict[str, str]] = {}
    for step in order_steps(steps):
        digests = {local: known[ref.rsplit(".", 1)[0]][ref.rsplit(".", 1)[1]] for local, ref in step.inputs.items()}
        rec = cache.components(step, digests)
        outs = {}
        for name, kind in step.outputs.items():
            d = tmp / f"{step.name}-{name}"
            d.mkdir(parents=True)
            (d / "x.txt").write_text(f"{step.name}.{name}")
            outs[name] = store.put_dir(d, kind=kind, format="test").digest
        rec.outputs, rec.run_id = outs, f"run-of-{step.name}"
        cache.save_record(store, rec)
        known[step.name] = outs


def test_closure_covers_the_library_not_the_platform():
    steps = {s.name: s for s in trainer_steps()}
    train = cache.code_closure(steps["pretrain.train"])
    # the loop, losses, MoE, attention, exporter, data order and packing config all count ...
    for mod in ("herd.train.loop", "herd.train.losses", "herd.model.moe", "herd.model.attention",
                "herd.model.hf", "herd.data.reader", "herd.data.config", "herd.flows._train", "herd.flows.pretrain"):
        assert mod in train, mod
    # ... the platform, the CLI and other flows do not
    assert not [m for m in train if m.startswith(("herd.platform", "herd.cli", "herd.flows.data"))]
    data = cache.code_closure(steps["data.pack"])
    assert "herd.data.pack" in data and not [m for m in data if m.startswith("herd.train")]
    # precision: auto is resolved before hashing
    assert steps["pretrain.train"].config_json()["pretrain"]["precision"] in ("bf16", "fp32")


def test_plan_names_the_edited_module_of_a_copied_package(herd_home, tmp_path):
    store = ArtifactStore(herd_home / "artifacts")
    fake_finished(store, trainer_steps(), tmp_path / "outs")
    src = tmp_path / "src"
    shutil.copytree(REPO / "herd", src / "herd", ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(src), HERD_HOME=str(herd_home), COLUMNS="400")

    def plan() -> str:
        res = subprocess.run([sys.executable, "-m", "herd", "plan", "distill", "--store", str(store.root)],
                             check=False, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert res.returncode == 0, res.stdout + res.stderr
        return res.stdout

    def rows(text: str) -> dict[str, str]:
        return {line.split()[0]: line for line in text.splitlines() if line.split()[:1] and "." in line.split()[0]
                and len(line.split()) > 1 and line.split()[1] in ("run", "reuse")}

    unchanged = rows(plan())
    assert all(" reuse " in unchanged[s] for s in ("data.pack", "pretrain.train", "distill.train")), unchanged

    loop = src / "herd" / "train" / "loop.py"
    loop.write_text(loop.read_text() + "\n# an edit to the training loop\n")
    text = plan()
    edited = rows(text)
    assert " run " in edited["pretrain.train"] and "code changed: herd.train.loop" in edited["pretrain.train"]
    assert " run " in edited["distill.train"] and "upstream pretrain.train will run" in edited["distill.train"]
    assert "code changed: herd.train.loop" in edited["distill.train"]
    assert all(" reuse " in edited[s] for s in ("data.synthetic", "data.clean", "data.tokenizer", "data.pack"))
    assert text.splitlines()[0] == "code changed: herd.train.loop: 2 steps re-run"


def test_env_change_is_named_once_for_every_step(herd_home, tmp_path, monkeypatch):
    rt = Runtime(RuntimeConfig(home=str(herd_home)))
    runner = Runner(rt, progress=False)
    steps = trainer_steps()
    fake_finished(runner.store, steps, tmp_path)
    assert {e.action for e in runner.plan(steps)} == {"reuse"}
    old = cache.env_fingerprint()
    monkeypatch.setattr(cache, "env_fingerprint", lambda: {**old, "torch": old["torch"] + ".new"})
    entries = runner.plan(steps)
    assert [e.action for e in entries] == ["run"] * len(steps)
    assert summarize(entries)[0] == f"torch {old['torch']} -> {old['torch']}.new: {len(steps)} steps re-run"


# --------------------------------------------------------------------- force, crash, traceback, relay
class Cfg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    n: int = 5


SEEN: list[str] = []  # Ray Train run names the make step saw (in-driver steps: this process)
CRASH = {"on": False}


def make(ctx: StepContext) -> None:
    SEEN.append(ctx.train_run_name)
    if CRASH["on"]:
        raise RuntimeError("crashed mid-training")
    out = ctx.output_dir("numbers")
    (out / "n.json").write_text(json.dumps(list(range(ctx.config.n))))  # the same content every time
    ctx.annotate_output("numbers", run_name=ctx.train_run_name, at=time.time())  # metadata: not hashed
    for i in range(3):
        ctx.log_metrics({"i": float(i)}, step=i)
        ctx.progress(i + 1, 3, f"item {i}")
    time.sleep(1)  # let the relay show the last progress report while the step still runs


def use(ctx: StepContext) -> None:
    nums = json.loads((ctx.inputs["numbers"].local_path() / "n.json").read_text())
    (ctx.output_dir("total") / "sum.json").write_text(json.dumps(sum(nums)))


def two_steps(verify=None) -> list[Step]:
    return [Step("t.make", make, config=Cfg(), config_path="t.make", outputs={"numbers": "dataset"},
                 in_driver=True),
            Step("t.use", use, inputs={"numbers": "t.make.numbers"}, outputs={"total": "report"}, in_driver=True,
                 verify_reuse=verify)]


def test_force_reruns_fresh_and_a_crashed_force_is_never_hidden(ray_local, herd_home, monkeypatch):
    SEEN.clear()
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=False)
    first = runner.run(two_steps())
    assert first.executed == ["t.make", "t.use"]

    forced = runner.run(two_steps(), force=["t.make"])
    # re-ran from scratch under a fresh Ray Train run name; same content -> same digest -> t.use reused
    assert forced.executed == ["t.make"] and forced.reused == ["t.use"]
    assert forced.outputs == first.outputs
    assert SEEN[1] != SEEN[0] and SEEN[1].startswith(SEEN[0] + "-")
    assert forced.records["t.make"].run_id != first.records["t.make"].run_id

    CRASH["on"] = True
    try:
        with pytest.raises(StepFailed, match="t.make failed: RuntimeError: crashed mid-training"):
            runner.run(two_steps(), force=["t.make"])
    finally:
        CRASH["on"] = False
    crashed_attempt = SEEN[2]
    plan = {e.step: e for e in runner.plan(two_steps())}
    assert plan["t.make"].action == "run" and "forced re-run (--force)" in plan["t.make"].reasons[0]
    again = runner.run(two_steps())  # the old record is NOT silently reused: the forced attempt runs again
    assert again.executed == ["t.make"] and again.reused == ["t.use"]
    assert SEEN[3] == crashed_attempt  # ... resuming that attempt's Ray Train run, not the finished one
    assert runner.plan(two_steps())[0].action == "reuse"


def test_verify_reuse_and_a_failing_mlflow_call_drops_nothing(ray_local, herd_home, monkeypatch, capsys):
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=True)
    real, calls = runner.lineage.log_metrics, []

    def flaky(*args, **kw):  # MLflow refuses the first two metric writes
        calls.append(args)
        if len(calls) <= 2:
            raise ConnectionError("MLflow is restarting")
        return real(*args, **kw)

    monkeypatch.setattr(runner.lineage, "log_metrics", flaky)
    first = runner.run(two_steps())
    history = MlflowClient(runner.rt.tracking_uri).get_metric_history(first.records["t.make"].run_id, "i")
    assert sorted((m.step, m.value) for m in history) == [(0, 0.0), (1, 1.0), (2, 2.0)]
    assert len(calls) > 2
    shown = capsys.readouterr().err  # the terminal: state changes with elapsed time, and live progress
    assert "running  t.make" in shown and "3/3  item 2" in shown and "done     t.make" in shown

    alive = {"up": True}

    def endpoint_up(outputs) -> str | None:
        assert set(outputs) == {"total"} and outputs["total"].kind == "report"
        return None if alive["up"] else "endpoint http://127.0.0.1:9 not answering"

    assert [e.action for e in runner.plan(two_steps(endpoint_up))] == ["reuse", "reuse"]
    alive["up"] = False
    plan = runner.plan(two_steps(endpoint_up))
    assert plan[1].action == "run" and plan[1].reasons == ["endpoint http://127.0.0.1:9 not answering"]
    capsys.readouterr()
    res = runner.run(two_steps(endpoint_up))
    assert res.reused == ["t.make"] and res.executed == ["t.use"]
    assert "queued   t.use    endpoint http://127.0.0.1:9 not answering" in capsys.readouterr().err


def boom(ctx: StepContext) -> None:
    _inner_helper(ctx.config.n)


def _inner_helper(n: int) -> None:
    raise ValueError(f"bad value {n}: the step broke here")


def test_failing_in_driver_step_prints_its_traceback(ray_local, herd_home, monkeypatch):
    def build(recipe) -> list[Step]:
        return [Step("t.boom", boom, config=Cfg(n=42), config_path="t.boom", outputs={"out": "file"},
                     in_driver=True)]

    monkeypatch.setattr(flows, "FLOWS", {"t": build})
    res = CliRunner().invoke(app, ["flow", "t"])
    assert res.exit_code == 1
    text = res.output
    assert "Traceback (most recent call last)" in text and "in _inner_helper" in text and "in boom" in text
    assert "ValueError: bad value 42: the step broke here" in text
    last = [ln for ln in text.splitlines() if ln.strip()][-1]
    assert "step t.boom failed: ValueError: bad value 42" in last
    log = Path(last.rsplit(" in ", 1)[1].rstrip(")").strip())
    assert log.is_file() and "in _inner_helper" in log.read_text()
    client = MlflowClient(Runtime(RuntimeConfig(home=str(herd_home))).tracking_uri)
    run = client.search_runs([client.get_experiment_by_name("herd").experiment_id],
                             "tags.`herd.step` = 't.boom'")[0]
    assert run.info.status == "FAILED"
    saved = Path(client.download_artifacts(run.info.run_id, "error/traceback.txt", str(herd_home)))
    assert "in _inner_helper" in saved.read_text()


# ---------------------------------------------------------------------------------------------- leases
HOLD = """
import sys, time
from herd.platform.lease import StepLease
from herd.platform.store import ArtifactStore
lease = StepLease(ArtifactStore(sys.argv[1]), sys.argv[2])
lease.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[3]))
lease.release()
"""


def hold(root: str, step: str, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, root, step, str(seconds)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_on_one_store_is_refused_naming_the_holder(ray_local, herd_home):
    runner = Runner(Runtime(RuntimeConfig(home=str(herd_home))), progress=False)
    holder = hold(runner.store.root, "t.make", 120)
    try:
        with pytest.raises(LeaseHeld) as err:
            runner.run(two_steps())
        msg = str(err.value)
        assert f"pid {holder.pid} on host {socket.gethostname()}" in msg and "t.make" in msg
        assert "LEASE.json" in msg
    finally:
        holder.kill()
        holder.wait()
    res = runner.run(two_steps())  # the holder is gone: its lease expired with it
    assert res.executed == ["t.make", "t.use"]
    assert not runner.store.exists("steps/t.make/LEASE.json")


def test_lease_waits_for_the_holder_to_finish(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    holder = hold(store.root, "x.y", 2)
    told: list[dict] = []
    t0 = time.monotonic()
    with StepLease(store, "x.y", wait_s=60, poll_s=0.2, on_wait=told.append):
        waited = time.monotonic() - t0
        assert json.loads(store.read_text("steps/x.y/LEASE.json"))["pid"] == os.getpid()
    holder.wait()
    assert waited > 0.5 and told and told[0]["pid"] == holder.pid
    assert not store.exists("steps/x.y/LEASE.json")


# ---------------------------------------------------------------------------------------------- store
def test_committing_an_existing_artifact_never_deletes_the_live_one(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path / "store")
    src = tmp_path / "src"
    src.mkdir()
    (src / "w.bin").write_bytes(b"weights" * 100)
    live = store.put_dir(src, kind="model", format="test")
    live_dir = Path(store.path(store.object_key(live.digest)))
    inode = (live_dir / "w.bin").stat().st_ino
    # the race: another process committed the same content after this one checked has()
    monkeypatch.setattr(ArtifactStore, "has", lambda self, d, _n=[0]: _n.__setitem__(0, _n[0] + 1) or _n[0] > 1)
    again = store.put_dir(src, kind="model", format="test")
    assert again.digest == live.digest
    assert (live_dir / "w.bin").stat().st_ino == inode  # the very same file: never deleted, never replaced
    assert not list((Path(store.root) / ".staging").glob("*"))
