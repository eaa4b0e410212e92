"""Where herd runs: the embedded default, an existing cluster/server/S3, and ``herd up`` / ``herd down``.

Embedded default, no configuration: a local Ray started by the command (dashboard 127.0.0.1:8265, token auth,
token at ``$HERD_HOME/ray_auth_token`` unless ``RAY_AUTH_TOKEN_PATH`` says otherwise), MLflow on sqlite at
``$HERD_HOME/mlflow.db``, artifacts at ``$HERD_HOME/artifacts``; ``HERD_HOME`` defaults to ``./.herd``.
``--address`` / ``--tracking-uri`` / ``--store`` (or ``runtime:`` in the recipe) switch to a Ray cluster, an
MLflow server and S3. ``herd up`` starts a persistent Ray head and MLflow server (pids and addresses in
``$HERD_HOME/services.json``); later commands attach to them automatically. An already-initialized Ray in this
process (a test fixture, a notebook) is always reused, never replaced.

    rt = Runtime(recipe.runtime)            # nothing is written until rt.start()
    rt.start(); ...; rt.stop()
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.platform.config import RuntimeConfig
from herd.platform.errors import HerdError
from herd.platform.store import ArtifactStore

# Forwarded to Ray tasks so workers of a cluster started elsewhere reach the same S3 / MLflow.
# Only these: a task with a runtime_env gets a dedicated worker pool (a fresh process start, ~2 s here).
FORWARD_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
               "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def base_env(home: Path) -> None:
    """Process env every herd command sets (before Ray/MLflow start; kept if the user set them)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Train V2 report() throttle
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HERD_HOME", str(home))
    if "ray._raylet" in sys.modules:
        # Ray reads its auth settings once, at import: changing them now would give the cluster a token the
        # driver does not send. Ray's own default then applies (a token in ~/.ray/auth_token).
        return
    if "RAY_AUTH_TOKEN_PATH" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        token = home / "ray_auth_token"
        if not token.exists():
            token.write_text(secrets.token_hex(32))
            token.chmod(0o600)
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the Ray CLI needs it with a token path (Ray 2.60)


def services_file(home: Path) -> Path:
    return home / "services.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def read_services(home: Path) -> dict[str, Any]:
    """``herd up`` services that are still alive."""
    path = services_file(home)
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {k: v for k, v in data.items() if isinstance(v, dict) and _alive(int(v.get("pid", -1)))}


@dataclass
class RayInfo:
    address: str
    dashboard_url: str
    token_path: str
    started_here: bool


class Runtime:
    """Resolved runtime: home, store, tracking URI and Ray address (CLI flags > recipe > herd up > embedded)."""

    def __init__(self, cfg: RuntimeConfig | None = None, *, address: str | None = None,
                 tracking_uri: str | None = None, store: str | None = None):
        cfg = cfg or RuntimeConfig()
        self.cfg = cfg
        self.home = cfg.resolved_home()
        running = read_services(self.home)
        self.ray_address = address or cfg.ray_address or running.get("ray", {}).get("address")
        self.tracking_uri = (tracking_uri or cfg.tracking_uri or running.get("mlflow", {}).get("uri")
                             or cfg.resolved_tracking_uri())
        self.store_uri = store or cfg.resolved_store()
        self.experiment = cfg.experiment
        self.ray: RayInfo | None = None

    # ------------------------------------------------------------------------------------------ parts
    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.store_uri, self.cfg.storage_options, cache_dir=self.home / "cache")

    def mlflow_artifact_location(self) -> str | None:
        """Where a new experiment keeps MLflow's own artifacts (servers decide themselves)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        store = self.artifact_store()
        return store.uri("mlflow") if not store.local else str(self.home / "mlartifacts")

    def task_env(self) -> dict[str, str]:
        return {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}

    # ---------------------------------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Create HERD_HOME and set the process env (token path, telemetry off, Train report interval)."""
        self.home.mkdir(parents=True, exist_ok=True)
        base_env(self.home)

    def start(self) -> RayInfo:
        """Prepare, then attach to (or start) Ray. Idempotent."""
        if self.ray is not None:
            return self.ray
        self.prepare()
        import ray

        token = os.environ.get("RAY_AUTH_TOKEN_PATH") or (
            "$RAY_AUTH_TOKEN" if "RAY_AUTH_TOKEN" in os.environ else str(Path.home() / ".ray" / "auth_token"))
        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            self.ray = RayInfo(ctx.gcs_address, _dashboard(), token, started_here=False)
            return self.ray
        if self.ray_address:
            info = ray.init(address=self.ray_address, log_to_driver=True)
            started = False
        else:
            kw: dict[str, Any] = {}
            if self.cfg.num_cpus:
                kw["num_cpus"] = self.cfg.num_cpus
            if self.cfg.object_store_mb:
                kw["object_store_memory"] = self.cfg.object_store_mb * 1024**2
            # A second herd command (or any other local Ray) may hold the dashboard port: take a free one instead
            # of failing; the progress display and `RayInfo.dashboard_url` say which.
            info = ray.init(include_dashboard=True, dashboard_host="127.0.0.1",
                            dashboard_port=_free_port(self.cfg.dashboard_port), log_to_driver=True, **kw)
            started = True
        dash = info.dashboard_url or ""
        self.ray = RayInfo(info.address_info.get("gcs_address", self.ray_address or ""),
                           f"http://{dash}" if dash and not dash.startswith("http") else dash, token, started)
        return self.ray

    def stop(self) -> None:
        """Shut down the Ray this command started (an attached one is left running)."""
        if self.ray is not None and self.ray.started_here:
            import ray

            ray.shutdown()
        self.ray = None


def _dashboard() -> str:
    try:
        import ray

        url = ray._private.worker.get_dashboard_url()
        return f"http://{url}" if url and not url.startswith("http") else (url or "")
    except (AttributeError, RuntimeError):
        return ""


# ----------------------------------------------------------------------------------------- herd up/down
def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise HerdError("no free TCP port on 127.0.0.1")


def _bin(name: str) -> str:
    cand = Path(sys.executable).parent / name
    return str(cand) if cand.exists() else name


def _wait(url: str, timeout: float, headers: dict[str, str] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=2):
                return True
        except OSError:
            time.sleep(0.5)
    return False


def up(cfg: RuntimeConfig, mlflow_port: int = 5000, ray_port: int = 6380) -> dict[str, Any]:
    """Start a persistent local Ray head and MLflow server for HERD_HOME (no-op for parts already running)."""
    home = cfg.resolved_home()
    home.mkdir(parents=True, exist_ok=True)
    base_env(home)
    services = read_services(home)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    if "ray" not in services:
        port = _free_port(ray_port)
        dash_port = _free_port(cfg.dashboard_port)
        cmd = [_bin("ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash_port}", "--disable-usage-stats"]
        if cfg.num_cpus:
            cmd.append(f"--num-cpus={cfg.num_cpus}")
        # --block keeps `ray start` in the foreground; stopping its process group stops exactly this head.
        with open(logs / "ray.log", "ab") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                    env=dict(os.environ))
        services["ray"] = {"pid": proc.pid, "address": f"127.0.0.1:{port}",
                           "dashboard": f"http://127.0.0.1:{dash_port}",
                           "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH", "")}
    if "mlflow" not in services:
        port = _free_port(mlflow_port)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [_bin("mlflow"), "server", "--backend-store-uri", cfg.tracking_uri or cfg.resolved_tracking_uri(),
               "--artifacts-destination", str(home / "mlartifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
        with open(logs / "mlflow.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        services["mlflow"] = {"pid": proc.pid, "uri": f"http://127.0.0.1:{port}"}
    services_file(home).write_text(json.dumps(services, indent=2))
    token = Path(services["ray"]["token_path"]).read_text().strip() if services["ray"]["token_path"] else ""
    ok_ray = _wait(f"{services['ray']['dashboard']}/api/version", 90, {"Authorization": f"Bearer {token}"})
    ok_ml = _wait(f"{services['mlflow']['uri']}/health", 90)
    if not (ok_ray and ok_ml):
        down(cfg)
        raise HerdError(f"herd up: {'Ray' if not ok_ray else 'MLflow'} did not become ready in 90 s; "
                        f"see {logs}")
    return services


def down(cfg: RuntimeConfig) -> list[str]:
    """Stop what ``herd up`` started for this HERD_HOME (by its recorded process groups)."""
    home = cfg.resolved_home()
    path = services_file(home)
    if not path.exists():
        return []
    stopped = []
    for name, svc in json.loads(path.read_text()).items():
        pid = int(svc.get("pid", -1))
        if pid > 0 and _alive(pid):
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(60):
                if not _alive(pid):
                    break
                time.sleep(0.5)
            else:
                os.killpg(pid, signal.SIGKILL)
            stopped.append(name)
    path.unlink()
    return stopped


__all__ = ["FORWARD_ENV", "RayInfo", "Runtime", "base_env", "down", "read_services", "up"]
