"""`herd up` / `herd down`: a persistent Ray head + MLflow server that later commands attach to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import demo_flow
import pytest

from herd.platform.config import RuntimeConfig
from herd.platform.lineage import LineageReader
from herd.platform.runtime import Runtime, read_services


def _herd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herd", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=240)


@pytest.mark.slow
def test_up_attach_down(herd_home, tmp_path):
    env = dict(os.environ, HERD_HOME=str(herd_home))
    env.pop("RAY_AUTH_TOKEN_PATH", None)  # herd chooses its own token file under HERD_HOME
    up = _herd("up", env=env)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        services = read_services(herd_home)
        assert set(services) == {"ray", "mlflow"}
        token_path = services["ray"]["token_path"]
        assert token_path == str(herd_home / "ray_auth_token") and token_path in up.stdout
        req = urllib.request.Request(f"{services['ray']['dashboard']}/api/version",
                                     headers={"Authorization": f"Bearer {Path(token_path).read_text().strip()}"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"{services['mlflow']['uri']}/health", timeout=10) as r:
            assert r.status == 200

        rt = Runtime(RuntimeConfig(home=str(herd_home)))  # no flags: attaches to what `herd up` started
        assert rt.ray_address == services["ray"]["address"] and rt.tracking_uri == services["mlflow"]["uri"]

        src = tmp_path / "raw.txt"
        src.write_text("1 2 3")
        script = Path(demo_flow.__file__)
        env_drv = dict(env, PYTHONPATH=str(script.parent), RAY_AUTH_TOKEN_PATH=token_path)
        drv = subprocess.run([sys.executable, str(script), str(herd_home), "", str(src), "2", "0"], env=env_drv,
                             check=False, capture_output=True, text=True, timeout=240)
        assert drv.returncode == 0, drv.stdout[-3000:] + drv.stderr[-3000:]
        assert services["ray"]["dashboard"] in drv.stderr  # it attached to the `herd up` head
        # the flow's runs landed in the `herd up` MLflow server
        digest = json.loads((herd_home / "artifacts/steps/demo.train/latest.json").read_text())["outputs"]["model"]
        tree = LineageReader(services["mlflow"]["uri"]).up(digest)
        assert tree["made_by"]["step"] == "demo.train"
    finally:
        down = _herd("down", env=env)
    assert down.returncode == 0 and "stopped: ray, mlflow" in down.stdout, down.stdout + down.stderr
    assert read_services(herd_home) == {}
    for svc in services.values():
        with pytest.raises(ProcessLookupError):
            os.kill(int(svc["pid"]), 0)
