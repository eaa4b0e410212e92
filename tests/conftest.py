"""Shared test fixtures: a real local Ray, moto's S3 server, a real MLflow server, and a HERD_HOME tmp dir.

Every area uses these instead of starting its own services:

- ``ray_local`` (session): one real local Ray (2 CPUs, dashboard on 127.0.0.1, token auth with the token in a tmp
  file). herd's runner attaches to an already-initialized Ray, so flows run inside the tests reuse it.
- ``s3_server`` (session): ``moto_server`` as a subprocess on 127.0.0.1 with a free port; sets ``AWS_*``,
  ``AWS_ENDPOINT_URL`` and ``MLFLOW_S3_ENDPOINT_URL`` for the session and creates the bucket ``S3_BUCKET``
  ("herd-test"). Yields the endpoint URL. ``s3_uri`` (function) gives a fresh ``s3://herd-test/<unique>`` prefix.
- ``mlflow_server`` (session): ``mlflow server`` on 127.0.0.1 backed by sqlite, ``--workers 1``, job execution off.
  Yields its tracking URI (``http://127.0.0.1:<port>``).
- ``herd_home`` (function): a fresh directory exported as ``HERD_HOME``.
- ``finished_pipeline`` (session): every registered flow but deploy run once on the ``test`` recipe in its own HERD_HOME
  (``FinishedPipeline``: home, recipe, tracking_uri, store, result), for flow and UI tests that need finished
  artifacts and MLflow records.

Services are stopped by their own process ids at session end.
"""

from __future__ import annotations

import http.client
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

S3_BUCKET = "herd-test"

# Session-wide scratch: short path because Ray puts unix sockets under its temp dir (107-char limit).
_SCRATCH = Path(tempfile.mkdtemp(prefix="herdt-", dir="/tmp"))
_TOKEN = _SCRATCH / "ray_auth_token"
_TOKEN.write_text(secrets.token_hex(32))
_TOKEN.chmod(0o600)

# Set before anything imports ray/mlflow so every process started from here inherits them.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Train V2 report() throttle (notes §2)
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ.setdefault("RAY_AUTH_TOKEN_PATH", str(_TOKEN))
os.environ.setdefault("RAY_AUTH_MODE", "token")  # the Ray CLI ignores RAY_AUTH_TOKEN_PATH without it (notes §1)
os.environ.setdefault("RAY_TMPDIR", str(_SCRATCH / "ray"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, from 20000-29999: outside Linux's ephemeral range (32768-60999) and
    Ray's worker ports (10002-19999). A kernel-chosen port is ephemeral, and a Ray head started between the pick
    and its use opens dozens of ephemeral sockets: once it took the port first (CI, test_herd_serve_status_down:
    "Failed to bind to address '127.0.0.1:45943'")."""
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(20000, 30000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free TCP port in 20000-29999 on 127.0.0.1")


def _wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{url}: server process exited early with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except (OSError, http.client.HTTPException) as e:  # refused / reset while starting
            last = e
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout:.0f}s: {last}")


def _stop(proc: subprocess.Popen) -> None:
    """Stop a server we started (its own process group, started with start_new_session=True)."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass


def _bin(name: str) -> str:
    """A console script from this interpreter's environment (never a system one)."""
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


@dataclass(frozen=True)
class RayCluster:
    address: str
    dashboard_url: str
    token_path: str


@pytest.fixture(scope="session")
def ray_local() -> Iterator[RayCluster]:
    """A real local Ray for the whole session (2 CPUs, dashboard on 127.0.0.1)."""
    import ray

    if ray.is_initialized():  # someone (a previous fixture use) already started it
        ctx = ray.get_runtime_context()
        yield RayCluster(ctx.gcs_address, "", os.environ["RAY_AUTH_TOKEN_PATH"])
        return
    info = ray.init(
        num_cpus=2,
        include_dashboard=True,  # the State API (and Ray Train's cleaner) need it (notes §1)
        dashboard_host="127.0.0.1",
        object_store_memory=1024**3,  # default is 30% of RAM; five areas share 24 GiB
        log_to_driver=True,
    )
    dash = info.dashboard_url or ""
    yield RayCluster(info.address_info["gcs_address"], f"http://{dash}" if dash else "", str(_TOKEN))
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1 (a subprocess, so Ray workers and MLflow servers can reach it)."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    with open(_SCRATCH / "moto.log", "wb") as log:  # the child keeps its own copy of the fd
        proc = subprocess.Popen(
            [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,  # boto3, s3fs and pyarrow all honour it (notes §6)
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        _wait_http(endpoint, 30, proc)
        import boto3

        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        yield endpoint
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _stop(proc)


@pytest.fixture
def s3_uri(s3_server: str) -> str:
    """A fresh, empty prefix in the session's moto bucket."""
    return f"s3://{S3_BUCKET}/{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def mlflow_server() -> Iterator[str]:
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, 1 worker, no job runner). Yields its URI."""
    root = _SCRATCH / f"mlflow-server-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    # free_port() can race with other services grabbing the port: retry on a fresh one if the server dies
    for attempt in range(3):
        port = free_port()
        proc = _start_mlflow(root, port, env)
        uri = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{uri}/health", 120, proc)
            break
        except (RuntimeError, TimeoutError):
            _stop(proc)
            if attempt == 2:
                raise
    try:
        yield uri
    finally:
        _stop(proc)


def _start_mlflow(root: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    with open(root / f"server-{port}.log", "wb") as log:
        return subprocess.Popen(
            [
                _bin("mlflow"), "server",
                "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                "--artifacts-destination", str(root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )


@pytest.fixture
def herd_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh HERD_HOME (exported) for one test."""
    home = tmp_path / "herd_home"
    monkeypatch.setenv("HERD_HOME", str(home))
    return home


@dataclass(frozen=True)
class FinishedPipeline:
    """The registered pipeline, run once on the ``test`` recipe in its own HERD_HOME (see ``finished_pipeline``)."""

    home: Path
    recipe: object  # herd.platform.config.Recipe
    tracking_uri: str
    store: str
    result: object  # herd.platform.runner.RunResult: executed, reused, records (step -> record), flow_runs


@pytest.fixture(scope="session")
def finished_pipeline(ray_local: RayCluster, tmp_path_factory: pytest.TempPathFactory) -> FinishedPipeline:
    """Every registered flow but deploy run once, in pipeline order, on the ``test`` recipe (herd/platform/recipes/test.yaml:
    the tiny pipeline with a smaller corpus, vocabulary and models): a few minutes on 2 cores, shared by every
    test that needs finished artifacts, MLflow runs, LoggedModels and registered models. Read-only for tests:
    a test that changes the store or MLflow makes its own HERD_HOME instead. Runs in this process on the
    session's Ray, with MLflow on sqlite under its HERD_HOME."""
    from herd.cli import pipeline_steps
    from herd.platform.config import load_recipe
    from herd.platform.runner import Runner
    from herd.platform.runtime import Runtime

    home = tmp_path_factory.mktemp("pipeline") / "herd_home"
    recipe = load_recipe("test", [f"runtime.home={home}"])
    runner = Runner(Runtime(recipe.runtime), progress=False)
    # every flow but deploy: a live replica in the session Ray would starve the 2-worker Ray Train tests that
    # follow (tests/serve deploys, and tears down, its own endpoints per module)
    steps = [s for s in pipeline_steps(recipe) if s.flow != "deploy"]
    result = runner.run(steps, recipe=recipe)
    return FinishedPipeline(home, recipe, runner.rt.tracking_uri, runner.store.root, result)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(_SCRATCH, ignore_errors=True)
