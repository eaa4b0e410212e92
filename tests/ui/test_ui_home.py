"""`herd ui` keeps MLflow's own artifacts (plots, model files) when HERD_HOME moves, and prints links that open the
runs view and the Model Registry. A real sqlite MLflow store, no Ray."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from mlflow import MlflowClient

from herd.platform.lineage import LineageRecorder, relocate_artifacts


def _home_with_a_plot(home: Path) -> tuple[str, str]:
    home.mkdir(parents=True)
    rec = LineageRecorder(f"sqlite:///{home / 'mlflow.db'}", "herd", str(home / "mlartifacts"))
    run = rec.start_flow_run("pretrain", {})
    png = home / "loss_curve.png"
    png.write_bytes(b"\x89PNG fake")
    rec.client.log_artifact(run, str(png), "plots")
    rec.end_run(run)
    return rec.experiment_id, run


def test_moved_home_keeps_its_plots(tmp_path):
    old, new = tmp_path / "old" / "home", tmp_path / "new" / "home"
    _, run = _home_with_a_plot(old)
    shutil.move(str(old), str(new))
    uri = f"sqlite:///{new / 'mlflow.db'}"
    client = MlflowClient(uri)
    assert client.get_run(run).info.artifact_uri.startswith(str(old))  # MLflow stored the absolute path
    assert relocate_artifacts(uri, new) == [str(old / "mlartifacts")]
    assert client.get_run(run).info.artifact_uri.startswith(str(new / "mlartifacts"))
    assert [a.path for a in client.list_artifacts(run, "plots")] == ["plots/loss_curve.png"]
    assert relocate_artifacts(uri, new) == []  # nothing left to move; a live home is never rewritten


def test_a_home_that_still_exists_is_not_rewritten(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _, run = _home_with_a_plot(a)
    b.mkdir()
    shutil.copy(a / "mlflow.db", b / "mlflow.db")  # a copy of the database, the original home still there
    assert relocate_artifacts(f"sqlite:///{b / 'mlflow.db'}", b) == []
    assert MlflowClient(f"sqlite:///{b / 'mlflow.db'}").get_run(run).info.artifact_uri.startswith(str(a))


def test_ui_prints_the_runs_view_and_registry_links(tmp_path):
    home = tmp_path / "home"
    exp, _ = _home_with_a_plot(home)
    herd = str(Path(sys.executable).parent / "herd")
    port = _free_port()
    proc = subprocess.Popen([herd, "ui", "--port", str(port)], cwd=tmp_path, env={**_env(), "HERD_HOME": str(home)},
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        lines = [proc.stdout.readline() for _ in range(2)]  # printed (and flushed) before `mlflow ui` starts
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert lines[0].strip().endswith(
        f"http://127.0.0.1:{port}/#/experiments/{exp}/runs?workflowType=machine_learning"), lines
    assert lines[1].strip() == f"Model Registry: http://127.0.0.1:{port}/#/models"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HERD_")}
