"""Where herd runs: the embedded default, an existing cluster/server/S3, and ``herd up`` / ``herd down``.

Embedded default, no configuration: a local Ray started by the command (dashboard 127.0.0.1:8265, token auth,
token at ``$HERD_HOME/ray_auth_token`` unless ``RAY_AUTH_TOKEN_PATH`` says otherwise; ``herd token`` prints
it), MLflow on sqlite at ``$HERD_HOME/mlflow.db``, artifacts at ``$HERD_HOME/artifacts``; ``HERD_HOME`` defaults
to ``./.herd``. ``--address`` / ``--tracking-uri`` / ``--store`` (or ``runtime:`` in the recipe) switch to a
Ray cluster, an MLflow server and S3.

Which Ray a command uses, in order: an already-initialized Ray in this process (a test fixture, a notebook);
``--address`` / ``runtime.ray_address`` / ``RAY_ADDRESS``; the head ``herd up`` (or ``ensure_persistent``)
recorded in ``$HERD_HOME/services.json`` if that very process still runs; else a new local Ray for this
command (``ray.init(address="local")``). Never Ray's own ``ray_current_cluster`` file: a head another tool left
behind, or one that is gone, would capture or hang the run.

The driver is a Ray job named after the command (``herd run --recipe tiny``, secret ``--set`` values hidden: the
dashboard's Jobs table shows it as "Name"); MLflow runs carry its job id and dashboard link (herd.platform.runs).
With ``route_logs`` (the CLI) Ray's own output goes to ``$HERD_HOME/logs/ray-<time>-<pid>.log`` and MLflow's
(``Creating initial MLflow database tables...``) to ``$HERD_HOME/logs/mlflow-client.log``; herd prints its own lines.

Secrets: S3 credentials from the environment are put into the store's storage options, so Ray tasks and
Ray Train workers receive them inside their (pickled) arguments; ``task_env()`` forwards only non-secret
settings in ``runtime_env``, which the Ray dashboard displays. ``credentials()`` / ``with_credentials`` carry
the rest for code that reads S3 through the environment.

    rt = Runtime(recipe.runtime)            # nothing is written until rt.start()
    rt.ensure_persistent()                  # optional: a Ray head that outlives this command (a served endpoint)
    rt.start(); ...; rt.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from herd.platform import services as _services
from herd.platform.config import RuntimeConfig
from herd.platform.errors import HerdError
from herd.platform.mlflow_views import command_name
from herd.platform.raylog import RayLog
from herd.platform.services import down, free_port, read_services, services_file
from herd.platform.store import ArtifactStore

# Environment that Ray tasks need on a cluster started elsewhere, split by whether the dashboard may show it.
# A task with a runtime_env gets a dedicated worker pool (a fresh process start, ~2 s here): keep these few.
FORWARD_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
SECRET_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
TOKEN_COMMAND = "herd token"
DEFAULT_DASHBOARD_PORT = 8265  # Ray's default; RuntimeConfig.dashboard_port's default


def write_private(path: Path, text: str) -> bool:
    """Create ``path`` with mode 0600 holding ``text``, atomically; False if it already exists (kept as is).

    The file is written under a temporary name created 0600 (O_EXCL, so never readable by others, not even
    for an instant) and linked into place: a concurrent reader sees no file or the whole file, never a
    partial token, and of two racing writers exactly one wins.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def token_path(home: Path) -> Path:
    """The Ray auth token file herd uses for HERD_HOME (``RAY_AUTH_TOKEN_PATH`` wins when set)."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or home / "ray_auth_token")


def base_env(home: Path) -> None:
    """Process env every herd command sets (before Ray/MLflow start; kept if the user set them)."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # Train V2 report() throttle
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # MLflow prints "View run ... / View experiment ..." on every run end (REST stores): herd prints its own links.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HERD_HOME", str(home))
    if "ray._raylet" in sys.modules:
        # Ray reads its auth settings once, at import: changing them now would give the cluster a token the
        # driver does not send. Ray's own default then applies (a token in ~/.ray/auth_token).
        return
    if "RAY_AUTH_TOKEN_PATH" not in os.environ and "RAY_AUTH_TOKEN" not in os.environ:
        token = home / "ray_auth_token"
        if not token.exists():
            home.mkdir(parents=True, exist_ok=True)
            write_private(token, secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    os.environ.setdefault("RAY_AUTH_MODE", "token")  # the Ray CLI needs it with a token path (Ray 2.60)


MLFLOW_LOG = "mlflow-client.log"  # under $HERD_HOME/logs; `mlflow.log` is `herd up`'s server


class MlflowLog:
    """MLflow's own log lines ("Creating initial MLflow database tables...", "Updating database tables", ...) go
    to a file under HERD_HOME instead of the terminal herd prints its progress on; its warnings and errors
    still reach the terminal as well. ``stop()`` gives MLflow its own handlers back."""

    LOGGERS = ("mlflow", "alembic")  # the loggers MLflow configures (sqlalchemy.engine stays at WARNING)

    def __init__(self, path: Path):
        self.path = path
        self._saved: list[tuple[logging.Logger, list[logging.Handler]]] = []
        self._file: logging.FileHandler | None = None

    def start(self) -> MlflowLog:
        import mlflow  # noqa: F401 -- MLflow sets its loggers' handlers when imported: replace them after that

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = logging.FileHandler(self.path, encoding="utf-8")
        self._file.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"))
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._saved.append((logger, list(logger.handlers)))
            terminal = logging.StreamHandler(sys.stderr)
            terminal.setLevel(logging.WARNING)
            if logger.handlers:
                terminal.setFormatter(logger.handlers[0].formatter)
            logger.handlers = [self._file, terminal]
        return self

    def stop(self) -> None:
        for logger, handlers in self._saved:
            logger.handlers = handlers
        self._saved = []
        if self._file is not None:
            self._file.close()
            self._file = None


@dataclass
class RayInfo:
    address: str
    dashboard_url: str
    token_path: str  # where the token is; print TOKEN_COMMAND to users, never the token
    started_here: bool
    log_path: str = ""  # Ray's own output of this command (empty when it was left where it goes by default)
    job_name: str = ""  # the name this driver's Ray job has on the dashboard (empty: Ray was initialized elsewhere)
    token_command: str = TOKEN_COMMAND


@dataclass(frozen=True)
class Credentials:
    """Secret environment (AWS keys) for Ray workers, carried as a task argument instead of in runtime_env."""

    env: tuple[tuple[str, str], ...] = ()

    def __repr__(self) -> str:  # never the values (tracebacks, logs)
        return f"Credentials({', '.join(k for k, _ in self.env) or 'none'})"

    def apply(self) -> None:
        for k, v in self.env:
            os.environ[k] = v


def with_credentials(creds: Credentials, fn: Any, *args: Any) -> Any:
    """Run ``fn(*args)`` after setting ``creds`` in this process: wrap a Ray task's function with it.

        ray.remote(with_credentials).options(name=..., runtime_env={"env_vars": rt.task_env()})
           .remote(rt.credentials(), fn, *args)
    """
    creds.apply()
    return fn(*args)


def _store_options(uri: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for an s3:// store completed from the environment (keys, session token, endpoint).

    Explicit options then travel with the store into every Ray task and Ray Train worker (pickled arguments), so
    workers of a Ray started before these variables were set, or on other machines, reach the same bucket.
    """
    if not uri.startswith(("s3://", "s3a://")):
        return options
    out = dict(options)
    if not ({"key", "secret", "token", "profile", "anon"} & set(out)) and os.environ.get("AWS_ACCESS_KEY_ID") \
            and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        out["key"], out["secret"] = os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            out["token"] = os.environ["AWS_SESSION_TOKEN"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL")
    if endpoint and "endpoint_url" not in out and "endpoint_url" not in out.get("client_kwargs", {}):
        out["endpoint_url"] = endpoint
    return out


class Runtime:
    """Resolved runtime: home, store, tracking URI and Ray address (CLI flags > recipe > herd up > embedded).

    ``route_logs=True`` (the CLI) sends Ray's own terminal output to ``$HERD_HOME/logs/ray-<time>-<pid>.log``
    (see herd.platform.raylog) from ``start()`` to ``stop()``; ``RayInfo.log_path`` names the file.
    """

    def __init__(self, cfg: RuntimeConfig | None = None, *, address: str | None = None,
                 tracking_uri: str | None = None, store: str | None = None, route_logs: bool = False,
                 job_name: str | None = None):
        cfg = cfg or RuntimeConfig()
        self.job_name = job_name or command_name()  # the Ray job's name on the dashboard (Jobs: "Name")
        self.cfg = cfg
        self.home = cfg.resolved_home()
        running = read_services(self.home)
        self.ray_address = (address or cfg.ray_address or os.environ.get("RAY_ADDRESS")
                            or running.get("ray", {}).get("address"))
        self.tracking_uri = (tracking_uri or cfg.tracking_uri or running.get("mlflow", {}).get("uri")
                             or cfg.resolved_tracking_uri())
        self.store_uri = store or cfg.resolved_store()
        self.experiment = cfg.experiment
        self.ray: RayInfo | None = None
        self.route_logs = route_logs
        self._raylog: RayLog | None = None
        self._mlflowlog: MlflowLog | None = None

    # ------------------------------------------------------------------------------------------ parts
    def artifact_store(self) -> ArtifactStore:
        return ArtifactStore(self.store_uri, _store_options(self.store_uri, self.cfg.storage_options),
                             cache_dir=self.home / "cache")

    def mlflow_artifact_location(self) -> str | None:
        """Where a new experiment keeps MLflow's own artifacts (servers decide themselves)."""
        if self.tracking_uri.startswith(("http://", "https://")):
            return None
        store = self.artifact_store()
        return store.uri("mlflow") if not store.local else str(self.home / "mlartifacts")

    def task_env(self) -> dict[str, str]:
        """Non-secret environment for Ray tasks' ``runtime_env`` (shown on the dashboard: no keys here)."""
        return {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}

    def credentials(self) -> Credentials:
        """Secret environment for Ray tasks, to pass as an argument through ``with_credentials``."""
        return Credentials(tuple((k, os.environ[k]) for k in SECRET_ENV if k in os.environ))

    # ---------------------------------------------------------------------------------------- lifecycle
    def prepare(self) -> None:
        """Create HERD_HOME and set the process env (token path, telemetry off, Train report interval); with
        ``route_logs``, MLflow's own log lines go to ``$HERD_HOME/logs/mlflow-client.log`` from now on."""
        self.home.mkdir(parents=True, exist_ok=True)
        base_env(self.home)
        if self.route_logs and self._mlflowlog is None:
            self._mlflowlog = MlflowLog(self.home / "logs" / MLFLOW_LOG).start()

    def ensure_persistent(self, on_event: Any = None) -> dict[str, Any]:
        """Use a Ray head that outlives this command: the recorded one, else start one as ``herd up`` does.

        For steps whose effect must survive the command, e.g. the deploy step's Ray Serve endpoint: call it
        before ``start()`` (the Runner starts Ray lazily, at the first step that needs it). Returns the head's
        record (address, dashboard, pid; ``{"address": ...}`` for a cluster named by ``--address``). The head is
        recorded in ``$HERD_HOME/services.json``, so later commands attach to it and ``herd down`` stops it. A Ray
        already initialized in this process (tests, notebooks) is used as it is.
        """
        if self.ray is not None and not self.ray.started_here:
            return {"address": self.ray.address, "dashboard": self.ray.dashboard_url}
        if self.ray is not None:
            raise HerdError("ensure_persistent() was called after this command started its own local Ray; "
                            "call it before Runtime.start() (before the first step runs)")
        self.prepare()  # before `import ray`: Ray reads the token settings once, at import
        import ray

        if ray.is_initialized():
            return {"address": ray.get_runtime_context().gcs_address, "dashboard": _dashboard()}
        recorded = read_services(self.home).get("ray")
        if self.ray_address and (recorded is None or recorded["address"] != self.ray_address):
            return {"address": self.ray_address}  # a cluster named by --address / RAY_ADDRESS lives on its own
        if recorded is None:
            recorded = up(self.cfg, parts=("ray",), on_event=on_event)["ray"]
        self.ray_address = recorded["address"]
        return recorded

    def on_own_head(self) -> bool:
        """Whether this command attaches to HERD_HOME's own persistent Ray head (started by `herd up` or an
        earlier run on this machine), not to a cluster named by --address / RAY_ADDRESS."""
        head = read_services(self.home).get("ray")
        return head is not None and self.ray_address == head.get("address")

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
        log_path = ""
        if self.route_logs:
            path = self.home / "logs" / f"ray-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
            self._raylog = RayLog(path).start()
            log_path = str(path)
        try:
            info, started = self._init_ray(ray)
        except Exception as e:  # Ray's own reason is in its log, which the terminal no longer shows: name it
            self._stop_log()
            where = f"; Ray's own output is in {log_path}" if log_path else ""
            target = f"the Ray cluster at {self.ray_address}" if self.ray_address else "a local Ray"
            raise HerdError(f"could not start or reach {target}: {type(e).__name__}: {e}{where}. On a busy "
                            "machine, retry; to use another cluster pass --address") from e
        except BaseException:
            self._stop_log()
            raise
        if self._raylog is not None:
            self._raylog.route_loggers()  # loggers ray.init configured
            self._raylog.attach_workers()
        dash = info.dashboard_url or ""
        self.ray = RayInfo(info.address_info.get("gcs_address", self.ray_address or ""),
                           f"http://{dash}" if dash and not dash.startswith("http") else dash, token, started,
                           log_path, job_name=self.job_name)
        return self.ray

    def job_config(self) -> Any:
        """This driver as a Ray job: named after the herd command (the dashboard's Jobs table shows the metadata key
        ``job_name`` as "Name", and ``_entrypoint`` makes it the "Entrypoint" too) and tagged with its HERD_HOME."""
        from ray.job_config import JobConfig

        return JobConfig(metadata={"job_name": self.job_name, "herd_home": str(self.home)})

    def _init_ray(self, ray: Any) -> tuple[Any, bool]:
        with _entrypoint(self.job_name):
            return self._init_ray_named(ray)

    def _init_ray_named(self, ray: Any) -> tuple[Any, bool]:
        if self.ray_address:
            return ray.init(address=self.ray_address, log_to_driver=True, job_config=self.job_config()), False
        kw: dict[str, Any] = {}
        if self.cfg.num_cpus:
            kw["num_cpus"] = self.cfg.num_cpus
        if self.cfg.object_store_mb:
            kw["object_store_memory"] = self.cfg.object_store_mb * 1024**2
        # address="local": always a new Ray for this command. Without it ray.init() follows Ray's
        # ray_current_cluster file to whatever `ray start` ran last, alive or not (it hangs on a dead one).
        # A second herd command (or any other local Ray) may hold the dashboard port. For the default port Ray's
        # dashboard itself tries 8265, 8266, ... (dashboard_port=None: no probe-then-bind race with the other
        # Rays on the machine); another port is probed here. The progress display and `RayInfo.dashboard_url`
        # say which port it got.
        port = None if self.cfg.dashboard_port == DEFAULT_DASHBOARD_PORT else free_port(self.cfg.dashboard_port)
        info = ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                        log_to_driver=True, job_config=self.job_config(), **kw)
        return info, True

    def _stop_log(self) -> None:
        if self._raylog is not None:
            self._raylog.stop()
            self._raylog = None

    def stop(self) -> None:
        """Shut down the Ray this command started (an attached one is left running); restore the terminal."""
        try:
            if self.ray is not None and self.ray.started_here:
                import ray

                ray.shutdown()
            elif self.ray is not None and self._raylog is not None:
                import ray

                ray.shutdown()  # disconnect this driver (the cluster keeps running) before the log closes
        finally:
            self.ray = None
            self._stop_log()
            if self._mlflowlog is not None:
                self._mlflowlog.stop()
                self._mlflowlog = None


@contextlib.contextmanager
def _entrypoint(name: str) -> Iterator[None]:
    """While ``ray.init`` runs, Ray's entrypoint of this driver (the dashboard's Jobs "Entrypoint") is ``name``.

    Ray reads it from the process's own command line, where a ``--set runtime.storage_options.secret=...`` stands
    in clear; ``name`` is the same command with secret values hidden. (Ray 2.60 offers no parameter for it: it calls
    ``ray._private.utils.get_entrypoint_name()``; left as is if a Ray version lacks that function.)
    """
    import ray._private.utils as ray_utils

    original = getattr(ray_utils, "get_entrypoint_name", None)
    if original is None:
        yield
        return
    ray_utils.get_entrypoint_name = lambda: name
    try:
        yield
    finally:
        ray_utils.get_entrypoint_name = original


def _dashboard() -> str:
    try:
        import ray

        url = ray._private.worker.get_dashboard_url()
        return f"http://{url}" if url and not url.startswith("http") else (url or "")
    except (AttributeError, RuntimeError):
        return ""


def up(cfg: RuntimeConfig, **kw: Any) -> dict[str, Any]:
    """``herd up``: base_env for HERD_HOME (token file, auth mode), then herd.platform.services.up."""
    home = cfg.resolved_home()
    home.mkdir(parents=True, exist_ok=True)
    base_env(home)
    return _services.up(cfg, **kw)


_free_port = free_port  # old private name, kept for callers outside this module


__all__ = ["FORWARD_ENV", "MLFLOW_LOG", "SECRET_ENV", "TOKEN_COMMAND", "Credentials", "MlflowLog", "RayInfo", "Runtime",
           "base_env", "command_name", "down", "free_port", "read_services", "services_file", "token_path", "up",
           "with_credentials", "write_private"]
