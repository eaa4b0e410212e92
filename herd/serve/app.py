"""Build, deploy, wait for, list and stop herd endpoints on Ray Serve.

    from herd.serve.app import ModelSpec, deploy, endpoints, stop
    spec = ModelSpec(id="herd-student", path="/ckpt", engine="vllm", digest="ab12...", role="student")
    ep = deploy([spec], deploy_cfg, home=herd_home)   # returns once the endpoint answers
    ep.url                                          # http://127.0.0.1:8000/v1
    endpoints(home); stop(home)

One application per ``deploy.app_name``: herd's ingress (``herd.serve.ingress``) in front of one model server
deployment per model (vLLM through Ray Serve LLM, or herd's engine as a Ray Serve LLM server class). The caller
is connected to the Ray cluster that should keep the endpoint (``herd up``'s for ``herd serve`` / ``herd run``).
Waiting fails fast when replicas stay pending for resources the cluster lacks (not after a fixed time: vLLM's CPU
build takes about a minute to start), naming what was lacking. Endpoints are recorded in
``$HERD_HOME/endpoints.json`` (URL, models, lineage; never the API key).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from herd.platform.errors import HerdError
from herd.serve.config import DeployConfig


class DeployError(HerdError):
    """A deployment that cannot start (pending resources, failed replicas, bad model)."""


@dataclass
class ModelSpec:
    """One model behind the endpoint: its public id, checkpoint dir, engine and lineage."""

    id: str
    path: str
    engine: str = "vllm"  # vllm | herd (resolved; never auto here)
    digest: str | None = None
    mlflow_model_id: str | None = None
    role: str | None = None
    tokenizer: str | None = None  # defaults to path

    def card_metadata(self, deploy: DeployConfig) -> dict[str, Any]:
        return {"herd": {"digest": self.digest, "mlflow_model_id": self.mlflow_model_id, "role": self.role,
                         "engine": self.engine},
                "max_request_context_length": deploy.max_model_len}


@dataclass
class Endpoint:
    app: str
    url: str  # base URL of the OpenAI API (ends with /v1)
    models: list[dict[str, Any]] = field(default_factory=list)
    api_key_env: str | None = None
    started_at: float = 0.0
    status: str = "RUNNING"


def api_key_sha256(deploy: DeployConfig) -> str | None:
    """sha256 of the API key named by ``deploy.api_key_env`` (None when no key is configured)."""
    if not deploy.api_key_env:
        return None
    key = os.environ.get(deploy.api_key_env, "")
    if not key:
        raise DeployError(f"deploy.api_key_env = {deploy.api_key_env!r} but that environment variable is empty: "
                          f"export {deploy.api_key_env}=<key> or remove api_key_env to serve without a key")
    return hashlib.sha256(key.encode()).hexdigest()


def resolve_engine(path: str | Path, deploy: DeployConfig, *, gpu: bool | None = None) -> str:
    """``deploy.engine`` resolved for one checkpoint: auto -> vllm when vLLM can run it here, else herd."""
    if deploy.engine != "auto":
        return deploy.engine
    from herd.serve.vllm_app import vllm_blockers

    return "herd" if vllm_blockers(path, gpu=deploy.num_gpus > 0 if gpu is None else gpu) else "vllm"


def build_app(specs: list[ModelSpec], deploy: DeployConfig) -> Any:
    """The Ray Serve application: herd's ingress bound to one server deployment per model.

    This is ``ray.serve.llm.build_openai_app`` with herd's ingress class and endpoint map: Ray's builder hard-codes
    the endpoint map, and herd's ingress adds routes (``/tokenizer_info``, ``/health``) and its own error handlers.
    """
    if not specs:
        raise DeployError("nothing to serve: pass at least one model")
    ids = [s.id for s in specs]
    if len(set(ids)) != len(ids):
        raise DeployError(f"model ids {ids} repeat; each served model needs its own name")
    from ray import serve
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard  # no public name in Ray 2.60
    from ray.serve.llm import build_llm_deployment
    from ray.serve.llm.ingress import make_fastapi_ingress

    from herd.serve.ingress import ENDPOINTS, HerdIngress, make_app
    from herd.serve.vllm_app import replica_runtime_env

    deployments, cards, served = {}, {}, {}
    for spec in specs:
        if spec.engine == "vllm":
            from herd.serve.vllm_app import llm_config
        elif spec.engine == "herd":
            from herd.serve.herd_server import llm_config  # type: ignore[assignment]
        else:
            raise DeployError(f"model {spec.id}: engine {spec.engine!r} is not vllm or herd")
        deployments[spec.id] = build_llm_deployment(llm_config(spec, deploy))
        cards[spec.id] = ModelCard(id=spec.id, object="model", owned_by="herd", permission=[],
                                   metadata=spec.card_metadata(deploy))
        served[spec.id] = {"tokenizer": spec.tokenizer or spec.path, "max_model_len": deploy.max_model_len,
                           "max_tokens": deploy.limits.max_tokens}
    ingress_cls = make_fastapi_ingress(HerdIngress, endpoint_map=ENDPOINTS, app=make_app())
    # The ingress does no model work: 0 CPUs, so it schedules even when the engines hold every CPU (on 2
    # logical CPUs a 1-CPU ingress never started beside vLLM's bundle).
    # Serve merges this over the driver's runtime env (env vars key by key)
    ingress = serve.deployment(ingress_cls, name="HerdIngress", max_ongoing_requests=100_000,
                               ray_actor_options={"num_cpus": 0, "runtime_env": replica_runtime_env()})
    return ingress.bind(llm_deployments=deployments, model_cards=cards, lora_paths={}, served=served,
                        api_key_sha256=api_key_sha256(deploy), max_body_bytes=deploy.limits.max_body_bytes)


def base_url(deploy: DeployConfig) -> str:
    host = "127.0.0.1" if deploy.host in ("0.0.0.0", "::") else deploy.host
    return f"http://{host}:{deploy.port}{deploy.route_prefix.rstrip('/')}/v1"


def deploy(specs: list[ModelSpec], deploy_cfg: DeployConfig, *, home: Path | None = None,
           log: Any = None) -> Endpoint:
    """Deploy ``specs`` as application ``deploy_cfg.app_name`` and return once the endpoint answers."""
    from ray import serve

    app = build_app(specs, deploy_cfg)
    serve.start(http_options={"host": deploy_cfg.host, "port": deploy_cfg.port})
    running = _serve_port()
    if running is not None and running != deploy_cfg.port:
        # Ray Serve has one HTTP proxy per cluster, started with the first app's options: later apps share it
        if log is not None:
            log(f"Ray Serve already listens on port {running} (not deploy.port {deploy_cfg.port}): using it")
        deploy_cfg = deploy_cfg.model_copy(update={"port": running})
    serve._run(app, name=deploy_cfg.app_name, route_prefix=deploy_cfg.route_prefix, _blocking=False)
    ep = Endpoint(app=deploy_cfg.app_name, url=base_url(deploy_cfg),
                  models=[asdict(s) for s in specs], api_key_env=deploy_cfg.api_key_env, started_at=time.time())
    wait_ready(deploy_cfg.app_name, ep.url, timeout_s=deploy_cfg.ready_timeout_s, log=log)
    if home is not None:
        _record(home, ep)
    return ep


def _serve_port() -> int | None:
    """The HTTP port of the running Ray Serve proxy (None if unknown)."""
    try:
        from ray.serve.context import _get_global_client

        return int(_get_global_client().http_config.port)
    except (ImportError, AttributeError, RuntimeError):
        return None


# ---------------------------------------------------------------------------------------------- waiting
def lacking_resources(app: str) -> list[str]:
    """What replicas of ``app`` are waiting for: pending placement groups / actors and the resources they need."""
    import ray
    from ray.util.placement_group import placement_group_table

    prefix = f"SERVE_REPLICA::{app}#"
    total = ray.cluster_resources()
    free = ray.available_resources()
    out = []
    for pg in placement_group_table().values():
        if not str(pg.get("name", "")).startswith(prefix) or pg.get("state") != "PENDING":
            continue
        need: dict[str, float] = {}
        for bundle in pg.get("bundles", {}).values():
            for k, v in bundle.items():
                need[k] = need.get(k, 0.0) + v
        short = {k: v for k, v in need.items() if v > free.get(k, 0.0)}
        out.append(_describe(pg["name"][len("SERVE_REPLICA::"):], need, short, free, total))
    try:
        from ray.util.state import list_actors

        for a in list_actors(address=_state_address(), filters=[("state", "=", "PENDING_CREATION")], detail=True,
                             raise_on_missing_output=False):
            name = a.name or ""
            if name.startswith(prefix) and not any(name[len("SERVE_REPLICA::"):] in line for line in out):
                # an actor inside a placement group asks for the group's bundle_group_* resources, which exist only
                # once the group is placed: not lacking (a pending group is reported by the scan above)
                need = {k: float(v) for k, v in (a.required_resources or {}).items()
                        if not k.startswith("bundle_group_")}
                short = {k: v for k, v in need.items() if v > free.get(k, 0.0)}
                if short:
                    out.append(_describe(name[len("SERVE_REPLICA::"):], need, short, free, total))
    except (ImportError, RuntimeError, ConnectionError):
        pass  # the state API needs the dashboard; pending placement groups (above) still tell what is lacking
    return out


def _running_tasks() -> int:
    """Ray tasks (not actors) running on the cluster now: work that will end and free its resources."""
    try:
        from ray.util.state import list_tasks

        return len(list_tasks(address=_state_address(), filters=[("state", "=", "RUNNING"),
                                                                 ("type", "=", "NORMAL_TASK")], limit=100,
                              raise_on_missing_output=False))
    except (ImportError, RuntimeError, ConnectionError):
        return 0  # the state API needs the dashboard: without it, pending time counts from the first miss


def _state_address() -> str:
    """The GCS of the cluster this process is connected to: the State API's default is the newest cluster started
    on this machine (``/tmp/ray/ray_current_cluster``), which is another one when a process started its own
    (``ray.init(address="local")``) beside a ``herd up`` cluster, and whose auth token it lacks."""
    import ray

    return ray.get_runtime_context().gcs_address


def _describe(replica: str, need: dict[str, float], short: dict[str, float], free: dict[str, float],
              total: dict[str, float]) -> str:
    lacked = ", ".join(f"{k} {v:g} (free {free.get(k, 0.0):g} of {total.get(k, 0.0):g})" for k, v in short.items())
    return f"replica {replica} needs {dict(need)}; lacking {lacked or 'placement (fragmented)'}"


def wait_ready(app: str, url: str, *, timeout_s: float = 900.0, pending_grace_s: float = 45.0,
               log: Any = None) -> None:
    """Wait until ``app`` is RUNNING and ``url``/../health answers.

    Fails (and deletes the app) when a replica stays pending for resources for ``pending_grace_s`` (at once if
    the cluster could never hold it), when a replica fails to start, or after ``timeout_s``.
    """
    import ray
    from ray import serve

    start = time.monotonic()
    pending_since: float | None = None
    last_msg = ""
    polls = 0
    while True:
        polls += 1
        st = serve.status().applications.get(app)
        status = str(getattr(st, "status", "NOT_STARTED"))
        if status.endswith("RUNNING") and _answers(url.rsplit("/v1", 1)[0] + "/health"):
            return
        if status.endswith(("DEPLOY_FAILED", "UNHEALTHY")):
            detail = _status_detail(st)
            serve.delete(app, _blocking=False)
            raise DeployError(f"endpoint {app} failed to start: {detail}")
        # the placement-group / actor scan asks Ray's state API: every 8th poll (2 s), Serve's own message each time
        scan = polls % 8 == 1
        lacking = _serve_says_lacking(st) or (lacking_resources(app) if scan else [])
        if lacking:
            pending_since = pending_since or time.monotonic()
            total = ray.cluster_resources()
            never = any(_never_fits(line, total) for line in lacking)
            if not never and scan and _running_tasks():
                # tasks end and free what they hold: the pipeline's own evaluate / quantize steps hold the CPUs
                # while its deploy step starts (the tiny run failed here after 45 s, its steps busy for 80 s);
                # only resources held by what does not end (actors, other deployments) count as lacking
                pending_since = time.monotonic()
            if never or time.monotonic() - pending_since > pending_grace_s:
                serve.delete(app, _blocking=False)
                why = "the cluster can never hold it" if never else f"pending {pending_grace_s:.0f} s"
                raise DeployError(f"endpoint {app} cannot start ({why}): " + "; ".join(lacking)
                                  + ". Free resources (herd status; herd down) or lower deploy.num_cpus / "
                                  "deploy.num_gpus / deploy.replicas")
        elif scan:  # nothing lacking on a full scan: not pending (any more)
            pending_since = None
        if time.monotonic() - start > timeout_s:
            serve.delete(app, _blocking=False)
            raise DeployError(f"endpoint {app} not ready after {timeout_s:.0f} s: {_status_detail(st)}")
        msg = _status_detail(st)
        if log is not None and msg != last_msg:
            log(f"{app}: {status.split('.')[-1]} {msg}".strip())
            last_msg = msg
        time.sleep(0.25)  # a herd-engine app is up in seconds: poll often (each poll is one controller call)


_SERVE_PENDING = re.compile(r"Deployment '([^']+)'.*?Resources required for each replica: (\{[^}]*\}), "
                            r"total resources available: (\{[^}]*\})")


def _serve_says_lacking(st: Any) -> list[str]:
    """Serve's own 'replicas not scheduled' messages whose resources exceed what is free in the cluster.

    Serve reports a replica that waits to be scheduled with what it needs; a need the cluster cannot meet now is
    pending resources (a replica that is merely slow to start needs nothing that is lacking and is not counted).
    """
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    out = []
    for name, d in (getattr(st, "deployments", None) or {}).items():
        m = _SERVE_PENDING.search(str(getattr(d, "message", "") or ""))
        if not m:
            continue
        try:
            need = {k: float(v) for k, v in json.loads(m.group(2)).items()}
        except ValueError:
            continue
        short = {k: v for k, v in need.items() if v > free.get(k, 0.0) + 1e-9}
        if short:
            out.append(_describe(name, need, short, free, total))
    return out


def _never_fits(line: str, total: dict[str, float]) -> bool:
    # "(free X of T)": a need above the cluster's total can never be met
    for key, need, _free, tot in re.findall(r"(\w+) ([\d.]+) \(free ([\d.]+) of ([\d.]+)\)", line):
        if float(need) > float(tot):
            return True
    return False


def _status_detail(st: Any) -> str:
    if st is None:
        return ""
    parts = []
    for name, d in (getattr(st, "deployments", None) or {}).items():
        msg = getattr(d, "message", "")
        if msg:
            parts.append(f"{name}: {msg}")
    return " | ".join(parts) or str(getattr(st, "message", "") or "")


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def answers(url: str) -> bool:
    """Whether the endpoint at ``url`` (its /v1 base) answers its health route."""
    return health(url) is not None


def health(url: str) -> dict[str, Any] | None:
    """The health document of the endpoint at ``url`` (its /v1 base): status and served model ids; None if down."""
    try:
        with urllib.request.urlopen(url.rsplit("/v1", 1)[0] + "/health", timeout=5) as r:
            return json.loads(r.read()) if r.status == 200 else None
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------- status and stop
def _endpoints_file(home: Path) -> Path:
    return Path(home) / "endpoints.json"


def _record(home: Path, ep: Endpoint) -> None:
    path = _endpoints_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[ep.app] = asdict(ep)
    path.write_text(json.dumps(data, indent=2))


def forget_endpoints(home: Path) -> list[str]:
    """Drop HERD_HOME's endpoint records (``herd down`` stops the cluster they run on); returns their names."""
    path = _endpoints_file(home)
    names = list(recorded(home))
    path.unlink(missing_ok=True)
    return names


def recorded(home: Path) -> dict[str, Endpoint]:
    """Endpoints recorded in HERD_HOME (they may have stopped since: see ``endpoints``)."""
    path = _endpoints_file(home)
    if not path.exists():
        return {}
    return {k: Endpoint(**v) for k, v in json.loads(path.read_text()).items()}


def endpoints(home: Path) -> list[Endpoint]:
    """Endpoints of HERD_HOME with their live status (the caller is connected to the cluster)."""
    from ray import serve

    apps = serve.status().applications
    out = []
    for name, ep in recorded(home).items():
        st = apps.get(name)
        ep.status = str(getattr(st, "status", "STOPPED")).split(".")[-1] if st is not None else "STOPPED"
        out.append(ep)
    return out


def stop(home: Path, app: str | None = None) -> list[str]:
    """Delete herd's Serve applications (one, or all recorded in HERD_HOME); returns their names."""
    from ray import serve

    names = [app] if app else list(recorded(home))
    live = serve.status().applications
    stopped = []
    for name in names:
        if name in live:
            serve.delete(name)
            stopped.append(name)
    path = _endpoints_file(home)
    if path.exists():
        data = json.loads(path.read_text())
        for name in names:
            data.pop(name, None)
        path.write_text(json.dumps(data, indent=2))
    return stopped


__all__ = ["DeployError", "Endpoint", "ModelSpec", "answers", "api_key_sha256", "build_app", "deploy",
           "endpoints", "forget_endpoints", "health", "lacking_resources", "recorded", "resolve_engine", "stop", "wait_ready"]
