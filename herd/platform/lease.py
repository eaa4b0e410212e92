"""Step leases: two `herd run`s on one artifact store never run the same step at once.

    with StepLease(store, "pretrain.train", wait_s=0):   # raises LeaseHeld naming the holder
        ...run the step...

The lease is ``steps/<step>/LEASE.json`` in the store: holder host, pid, process start time, start time and a
heartbeat the holder refreshes every few seconds. It is free when the file is absent, when its holder process is
gone (same host: the pid is dead or belongs to another process start), or when its heartbeat is older than
``STALE_S`` (another host: the holder stopped refreshing it). On a local store the lease is taken with an
exclusive create (atomic); on an object store with write-then-read-back, which is good enough against a second
human-started run but not a consensus protocol.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from datetime import UTC, datetime
from typing import Any, Self

from herd.platform.errors import FlowError
from herd.platform.store import ArtifactStore

HEARTBEAT_S = 5.0
STALE_S = 60.0  # a holder on another host that has not refreshed its heartbeat for this long is gone


class LeaseHeld(FlowError):
    """Another process holds the step's lease."""

    def __init__(self, step: str, holder: dict[str, Any], key: str):
        started = datetime.fromtimestamp(holder.get("started_at", 0), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        super().__init__(f"step {step} is being run by another herd process: pid {holder.get('pid')} on host "
                         f"{holder.get('host')} since {started} (lease {key}); wait for it to finish (`herd run "
                         "--wait-lease SECONDS`) or stop that process")
        self.step, self.holder = step, holder


def _proc_start(pid: int) -> str | None:
    """The process start time (clock ticks since boot, /proc/<pid>/stat field 22): tells a reused pid apart."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def holder_alive(holder: dict[str, Any], now: float | None = None) -> bool:
    """Whether the process named in a lease still runs (by pid + start time on this host, else by heartbeat)."""
    now = time.time() if now is None else now
    if holder.get("host") == socket.gethostname():
        pid = int(holder.get("pid", -1))
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # alive, owned by another user
            return True
        start = _proc_start(pid)
        return start is None or holder.get("proc_start") in (None, start)
    return now - float(holder.get("heartbeat", 0)) < STALE_S


class StepLease:
    """Holds ``steps/<step>/LEASE.json`` for the duration of a ``with`` block (see the module docstring)."""

    def __init__(self, store: ArtifactStore, step: str, wait_s: float = 0.0,
                 on_wait: Any = None, poll_s: float = 1.0):
        self.store, self.step, self.wait_s, self.poll_s = store, step, wait_s, poll_s
        self.on_wait = on_wait  # called once with the holder when this lease has to wait
        self.key = f"steps/{step}/LEASE.json"
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        pid = os.getpid()
        self.me = {"host": socket.gethostname(), "pid": pid, "proc_start": _proc_start(pid),
                   "started_at": time.time(), "token": self.token}

    def holder(self) -> dict[str, Any] | None:
        text = self.store.read_text(self.key)
        if text is None:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:  # a torn write of an object store: treat as held, it will be rewritten
            return {"host": "?", "pid": "?", "started_at": 0, "heartbeat": time.time()}

    def _try_take(self) -> dict[str, Any] | None:
        """Take the lease; return None on success, else the live holder."""
        current = self.holder()
        if current is not None and holder_alive(current):
            return current
        if current is not None:  # a dead holder's lease: drop it, then race for it like everyone else
            self.store.delete(self.key)
        body = json.dumps({**self.me, "heartbeat": time.time()})
        if self.store.local:
            path = self.store.path(self.key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return self.holder() or {"host": "?", "pid": "?", "started_at": time.time()}
            with os.fdopen(fd, "w") as f:
                f.write(body)
            return None
        self.store.write_text(self.key, body)
        time.sleep(0.2)  # let a concurrent writer's PUT land, then see who won
        won = self.holder()
        return None if won is not None and won.get("token") == self.token else won

    def acquire(self) -> None:
        deadline = time.monotonic() + self.wait_s
        told = False
        while True:
            holder = self._try_take()
            if holder is None:
                break
            if time.monotonic() >= deadline:
                raise LeaseHeld(self.step, holder, self.store.uri(self.key))
            if not told and self.on_wait is not None:
                self.on_wait(holder)
                told = True
            time.sleep(self.poll_s)
        # holders on other hosts (an object store, a shared file system) judge this one by its heartbeat
        self._beat = threading.Thread(target=self._heartbeat, daemon=True, name=f"herd-lease-{self.step}")
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = self.holder()
            if current is None or current.get("token") != self.token:
                return  # taken over (we were judged gone): never overwrite the new holder
            self.store.write_text(self.key, json.dumps({**self.me, "heartbeat": time.time()}))

    def release(self) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=HEARTBEAT_S + 1)
        current = self.holder()
        if current is not None and current.get("token") == self.token:
            self.store.delete(self.key)

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


__all__ = ["LeaseHeld", "StepLease", "holder_alive"]
