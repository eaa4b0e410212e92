"""Persistent local services for one HERD_HOME: ``herd up`` / ``herd down`` and the record between them.

``up()`` starts a Ray head (``ray start --head --block``) and an MLflow server as their own process groups and
records them in ``$HERD_HOME/services.json``: pid, the process's start time and command line, addresses. Every
reader checks that identity, so a recorded pid that the OS has since given to another process is never
attached to and never killed. ``down()`` stops exactly the recorded, verified groups, says what it is doing
(``on_event``), and removes Ray's ``ray_current_cluster`` file when it points at the head it stopped.

Ray's GCS (``--port``, default 6380) and its client ports listen on all interfaces in local mode: Ray cannot bind
them to loopback only. They are protected by the token auth herd always turns on (``herd token`` prints the
token); the dashboard and MLflow listen on 127.0.0.1 only.

    from herd.platform import services
    services.up(cfg)                 # {"ray": {...}, "mlflow": {...}}
    services.up(cfg, parts=("ray",)) # only a persistent Ray head (what a deploy step needs)
    services.down(cfg, on_event=print)
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from herd.platform.config import RuntimeConfig
from herd.platform.errors import HerdError

Event = Callable[[str], None]


def services_file(home: Path) -> Path:
    return home / "services.json"


# ------------------------------------------------------------------------------------------ process identity
def process_identity(pid: int) -> dict[str, str] | None:
    """``{"started": ..., "cmd": ...}`` of a live process, or None when there is none with this pid.

    ``started`` is the kernel's start time of the process (clock ticks since boot on Linux, ``ps lstart``
    elsewhere): with the command line it tells a process from a later one that got the same pid.
    """
    if pid <= 0:
        return None
    try:
        if sys.platform.startswith("linux"):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()  # the command name in (...) may hold spaces
            if fields[0] == "Z":  # a zombie has exited: nothing to attach to or stop
                return None
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            return {"started": fields[19], "cmd": cmd.strip()}  # field 22 of stat: starttime
        out = subprocess.run(["ps", "-o", "lstart=", "-o", "command=", "-p", str(pid)], capture_output=True,
                             text=True, check=False)
        line = out.stdout.strip()
        if out.returncode or not line:
            return None
        return {"started": line[:24], "cmd": line[24:].strip()}
    except (FileNotFoundError, ProcessLookupError, PermissionError, IndexError):
        return None


def _is_recorded(svc: dict[str, Any]) -> bool:
    """The recorded service is still the very process herd started (same pid, start time, command line)."""
    ident = process_identity(int(svc.get("pid", -1)))
    return ident is not None and ident.get("started") == svc.get("started") and ident.get("cmd") == svc.get("cmd")


def _record(svc: dict[str, Any]) -> dict[str, Any]:
    ident = process_identity(svc["pid"])
    return {**svc, **(ident or {})}


def read_services(home: Path) -> dict[str, Any]:
    """``herd up`` services of HERD_HOME that are still running as recorded (identity checked)."""
    path = services_file(home)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict) and _is_recorded(v)}


def _write_services(home: Path, services: dict[str, Any]) -> None:
    path = services_file(home)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps(services, indent=2))
    os.replace(tmp, path)  # a reader never sees half a file


# ------------------------------------------------------------------------------------------------- ports
def free_port(preferred: int, host: str = "127.0.0.1") -> int:
    """``preferred`` if nothing listens on it, else any free port.

    SO_REUSEADDR on the probe: a port in TIME_WAIT (e.g. right after `herd ui` stopped) is free for the servers
    herd starts, which set SO_REUSEADDR themselves; without it the probe would call the port busy and the
    service would wander to a random one. A port something still listens on stays busy either way.
    """
    for port in (preferred, 0):
        with socket.socket() as s:
            if port:  # not for port 0: there it would also accept a port an outgoing connection is using
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
                return s.getsockname()[1]
            except OSError:
                continue
    raise HerdError(f"no free TCP port on {host}")


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


# -------------------------------------------------------------------------------------------------- up/down
def up(cfg: RuntimeConfig, mlflow_port: int = 5000, ray_port: int = 6380, parts: Iterable[str] = ("ray", "mlflow"),
       on_event: Event | None = None) -> dict[str, Any]:
    """Start a persistent local Ray head and/or MLflow server for HERD_HOME (parts already running are kept).

    Expects ``base_env`` to have run (token path and auth mode in the environment).
    """
    say = on_event or (lambda _m: None)
    home = cfg.resolved_home()
    home.mkdir(parents=True, exist_ok=True)
    services = read_services(home)
    logs = home / "logs"
    logs.mkdir(exist_ok=True)
    started: list[str] = []
    if "ray" in parts and "ray" not in services:
        port, dash_port = free_port(ray_port, "0.0.0.0"), free_port(cfg.dashboard_port)
        cmd = [_bin("ray"), "start", "--head", "--block", f"--port={port}", "--dashboard-host=127.0.0.1",
               f"--dashboard-port={dash_port}", "--disable-usage-stats"]
        if cfg.num_cpus:
            cmd.append(f"--num-cpus={cfg.num_cpus}")
        say(f"starting Ray head on 127.0.0.1:{port} (log {logs / 'ray.log'})")
        # --block keeps `ray start` in the foreground; stopping its process group stops exactly this head.
        # On SIGTERM a Ray node first drains (lets Serve finish in-flight requests) for up to this many seconds;
        # Ray's default, 30 s, is the silence `herd down` used to take. A local head needs a few seconds.
        env = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5", **os.environ}
        with open(logs / "ray.log", "ab") as log:  # the child keeps its own copy of the fd
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        services["ray"] = {"pid": proc.pid, "address": f"127.0.0.1:{port}",
                           "dashboard": f"http://127.0.0.1:{dash_port}",
                           "token_path": os.environ.get("RAY_AUTH_TOKEN_PATH", "")}
        started.append("ray")
    if "mlflow" in parts and "mlflow" not in services:
        port = free_port(mlflow_port)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        cmd = [_bin("mlflow"), "server", "--backend-store-uri", cfg.tracking_uri or cfg.resolved_tracking_uri(),
               "--artifacts-destination", str(home / "mlartifacts"), "--host", "127.0.0.1",
               "--port", str(port), "--workers", "1"]
        say(f"starting MLflow server on http://127.0.0.1:{port} (log {logs / 'mlflow.log'})")
        with open(logs / "mlflow.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        services["mlflow"] = {"pid": proc.pid, "uri": f"http://127.0.0.1:{port}"}
        started.append("mlflow")
    ok = True
    if "ray" in started:
        tp = services["ray"]["token_path"]
        token = Path(tp).read_text().strip() if tp else ""
        ok = _wait(f"{services['ray']['dashboard']}/api/version", 120, {"Authorization": f"Bearer {token}"})
        what = "Ray"
    if ok and "mlflow" in started:
        ok = _wait(f"{services['mlflow']['uri']}/health", 120)
        what = "MLflow"
    # Identity is read once the services answer: right after Popen the child may not have exec'd yet.
    for name in started:
        services[name] = _record(services[name])
    _write_services(home, services)
    if not ok:
        down(cfg, on_event)
        raise HerdError(f"herd up: {what} did not become ready in 120 s; see {logs}")
    return services


def _ray_address_file() -> Path | None:
    try:
        from ray._common.utils import get_ray_address_file
    except ImportError:
        return None
    return Path(get_ray_address_file(None))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _stop_groups(targets: dict[str, dict[str, Any]], say: Event, grace_s: float) -> list[str]:
    """Stop every target: SIGTERM to the leader (``ray start`` drains the node and stops its own children while
    the GCS still answers), then SIGTERM / SIGKILL to whatever is left of its process group."""
    t0 = time.monotonic()
    pending: dict[str, int] = {}
    for name, svc in targets.items():
        pid = int(svc["pid"])
        say(f"stopping {name} (pid {pid}) ...")
        try:
            os.kill(pid, signal.SIGTERM)
            pending[name] = pid
        except ProcessLookupError:
            continue
    stopped = list(pending)
    while pending and time.monotonic() - t0 < grace_s:
        time.sleep(0.2)
        for name, pid in list(pending.items()):
            if process_identity(pid) is None:
                say(f"stopped {name} in {time.monotonic() - t0:.1f} s")
                del pending[name]
    for name, pid in pending.items():
        say(f"{name} still running after {grace_s:.0f} s: killing it")
    for name in stopped:  # leftovers of each group (a child the leader did not stop, or the leader itself)
        pgid = int(targets[name]["pid"])
        if not _group_alive(pgid):
            continue
        os.killpg(pgid, signal.SIGTERM if name not in pending else signal.SIGKILL)
        deadline = time.monotonic() + 3
        while _group_alive(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _group_alive(pgid):
            os.killpg(pgid, signal.SIGKILL)
    return stopped


def down(cfg: RuntimeConfig, on_event: Event | None = None, grace_s: float = 15.0) -> list[str]:
    """Stop what ``herd up`` started for this HERD_HOME: only processes whose identity still matches the record."""
    say = on_event or (lambda _m: None)
    home = cfg.resolved_home()
    path = services_file(home)
    if not path.exists():
        return []
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError:
        recorded = {}
    targets = {}
    for name, svc in recorded.items():
        if not isinstance(svc, dict):
            continue
        if _is_recorded(svc):
            targets[name] = svc
            continue
        ident = process_identity(int(svc.get("pid", -1)))
        if ident is not None:  # the pid was reused, or the record predates identity checks: hands off
            say(f"{name}: pid {svc.get('pid')} is not the process herd started (now {ident['cmd'][:80]!r}); "
                "left alone")
    stopped = _stop_groups(targets, say, grace_s)
    if "ray" in targets:
        # `ray start` wrote ray_current_cluster; left behind, it would send a plain `ray.init()` (Ray's CLI, a
        # notebook) to a dead address.
        port = str(targets["ray"].get("address", "")).rsplit(":", 1)[-1]
        addr_file = _ray_address_file()
        if addr_file is not None and addr_file.exists() and \
                addr_file.read_text().strip().rsplit(":", 1)[-1] == port:  # Ray writes the node IP, not 127.0.0.1
            addr_file.unlink(missing_ok=True)
            say(f"removed Ray's {addr_file} (it pointed at the stopped head)")
    path.unlink(missing_ok=True)
    return stopped


__all__ = ["down", "free_port", "process_identity", "read_services", "services_file", "up"]
