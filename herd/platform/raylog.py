"""Ray's own output goes to a log file under HERD_HOME, never to the terminal a herd command prints on.

Ray prints from three places into the driver's terminal:

- its C++ core worker writes ERROR lines to file descriptor 2 (e.g. "has constructor arguments in the object store
  and max_restarts > 0" at every Ray Train start);
- its Python loggers (``ray``, ``ray.data``, ``ray.train``, ...) log INFO/WARNING lines to stderr;
- with ``log_to_driver``, every worker's stdout/stderr (Ray Data progress notices, Train controller lines) is
  relayed to the driver's stdout/stderr.

``RayLog(path).start()`` sends all three to ``path``: descriptor 2 is pointed at the file while ``sys.stderr``
keeps writing to the terminal (a private copy of the old descriptor), so herd's own messages, tracebacks and
``warnings`` still show. ``attach_workers()`` (after ``ray.init``) swaps Ray's relay of worker output for one
that writes the file. ``stop()`` restores everything. The file is named in herd's error messages.

    log = RayLog(home / "logs" / "ray-20261201-153000-1234.log").start()
    ray.init(...); log.attach_workers()
    ...; ray.shutdown(); log.stop()
"""

from __future__ import annotations

import io
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

_RAY_RELAY = "ray_print_logs"  # the name ray._private.worker registers its worker-output relay under
_OURS = "herd_ray_log"


def _on_terminal(stream: Any) -> bool:
    try:
        return stream.fileno() in (1, 2)
    except (AttributeError, OSError, ValueError):  # StringIO, closed or detached streams
        return False


class RayLog:
    """Routes Ray's terminal output (fd 2, ``ray*`` loggers, relayed worker output) into one file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._file: IO[str] | None = None
        self._saved_fd: int | None = None
        self._saved_stderr: Any = None
        self._handlers: list[tuple[logging.StreamHandler, Any]] = []
        self._lock = threading.Lock()
        self._set_env = False

    def start(self) -> RayLog:
        if self._file is not None:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", buffering=1, encoding="utf-8", errors="backslashreplace")  # noqa: SIM115
        self._ray_data_config()
        import ray  # noqa: F401  (its `ray` logger handler binds to the stderr of import time: the real fd 2)

        sys.stderr.flush()
        if _on_terminal(sys.stderr) and sys.stderr.fileno() == 2:
            # Keep Python's sys.stderr on the terminal through a copy of fd 2, then point fd 2 itself at the file:
            # C++ code (Ray's core worker) writes to the descriptor and never sees sys.stderr.
            self._saved_fd = os.dup(2)
            self._saved_stderr = sys.stderr
            sys.stderr = io.TextIOWrapper(os.fdopen(self._saved_fd, "wb", closefd=False),
                                          encoding=self._saved_stderr.encoding or "utf-8",
                                          errors="backslashreplace", line_buffering=True)
            os.dup2(self._file.fileno(), 2)
        self.route_loggers()
        return self

    def _ray_data_config(self) -> None:
        """Ray Data configures its logger at import (which may come later, in a step): give it this file only."""
        if "RAY_DATA_LOGGING_CONFIG" in os.environ:  # the user's own choice wins
            return
        cfg = self.path.with_name("ray-data-logging.json")
        cfg.write_text(json.dumps({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"ray": {"format": "%(asctime)s\t%(levelname)s %(filename)s:%(lineno)s -- %(message)s"}},
            "handlers": {"herd": {"class": "logging.FileHandler", "formatter": "ray", "level": "INFO",
                                  "filename": str(self.path), "delay": True}},
            "loggers": {"ray.data": {"level": "INFO", "handlers": ["herd"], "propagate": False}}}))
        os.environ["RAY_DATA_LOGGING_CONFIG"] = str(cfg)  # JSON is YAML: Ray Data reads it with yaml.safe_load
        self._set_env = True

    def route_loggers(self) -> None:
        """Point Ray's loggers' terminal handlers at the file (those made after start() hold our terminal copy)."""
        if self._file is None:
            return
        names = ["ray", *[n for n in logging.root.manager.loggerDict if n.startswith("ray.")]]
        terminal = [s for s in (sys.stderr, sys.stdout, sys.__stdout__) if s is not None]
        for name in names:
            for h in logging.getLogger(name).handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler) \
                        and any(h.stream is t for t in terminal):
                    self._handlers.append((h, h.setStream(self._file)))

    def attach_workers(self) -> None:
        """Write the output Ray relays from workers (``log_to_driver``) to the file instead of the terminal."""
        if self._file is None:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as relay
        except ImportError:  # a Ray without the relay: worker output stays in Ray's own session logs
            return
        relay.remove_handler(_RAY_RELAY)
        relay.remove_handler(_OURS)
        relay.add_handler(_OURS, self._write_worker)

    def _write_worker(self, data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or ""
        prefix = f"({who} pid={data.get('pid')}{', err' if data.get('is_err') else ''})"
        with self._lock:
            if self._file is not None:
                self._file.writelines(f"{prefix} {line}\n" for line in data.get("lines", []))

    def stop(self) -> None:
        if self._file is None:
            return
        try:
            from ray._private.ray_logging import global_worker_stdstream_dispatcher as relay

            relay.remove_handler(_OURS)
        except ImportError:
            pass
        for h, old in self._handlers:
            h.setStream(old)
        self._handlers.clear()
        if self._set_env:
            os.environ.pop("RAY_DATA_LOGGING_CONFIG", None)
            self._set_env = False
        if self._saved_fd is not None:
            sys.stderr.flush()
            os.dup2(self._saved_fd, 2)
            sys.stderr = self._saved_stderr
            os.close(self._saved_fd)
            self._saved_fd = None
        with self._lock:
            self._file.close()
            self._file = None


__all__ = ["RayLog"]
