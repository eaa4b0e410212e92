"""Metrics, params, tags and progress from steps (Ray tasks, Ray Train workers, the driver) to MLflow and the
terminal, written by the driver alone (Ray Train's own rule: workers never talk to MLflow).

    sink = MetricSink(tracking, home, progress)     # one per Runner.run
    ctx_logger = sink.logger(run_id, "pretrain.train")   # a picklable MetricLogger a step (or its workers) calls
    sink.flush()                                    # after a step ends: everything it logged is written
    sink.close()                                    # at the end of the run

One ``ray.util.queue.Queue`` actor (0 CPUs) per run, created on first use; a driver thread drains it. A failing
MLflow call never stops the relay and never drops an item: it is logged, the item stays queued (in order) and is
retried on the next drain; what still cannot be written when the run ends goes to
``$HERD_HOME/logs/undelivered-metrics.jsonl``, named in a warning. Progress items update the terminal.
"""

from __future__ import annotations

import json
import logging
import queue as queue_mod
import threading
from pathlib import Path
from typing import Any

from herd.platform.progress import Progress
from herd.platform.runs import Tracking
from herd.platform.step import MetricLogger

_log = logging.getLogger("herd.runner")


class MetricSink:
    def __init__(self, tracking: Tracking, home: Path, progress: Progress | None = None) -> None:
        self.tracking = tracking
        self.home = home
        self.progress = progress
        self._queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.RLock()
        self._steps: dict[str, str] = {}  # run id -> step name (for progress items)
        self._retry: list[tuple] = []  # items whose MLflow write failed, oldest first
        self.failures = 0

    def logger(self, run_id: str, step: str = "") -> MetricLogger:
        with self._write_lock:  # steps start from several threads
            self._steps[run_id] = step
            if self._queue is None:
                from ray.util.queue import Queue

                self._queue = Queue(actor_options={"num_cpus": 0})
                self._thread = threading.Thread(target=self._drain_loop, daemon=True, name="herd-metrics")
                self._thread.start()
            return MetricLogger(self._queue, run_id)

    def _drain_loop(self) -> None:
        while not self._stop.is_set():
            self.flush()
            self._stop.wait(0.3)

    def flush(self) -> None:
        if self._queue is None and not self._retry:
            return
        from ray.exceptions import RayError
        with self._write_lock:
            items: list[tuple] = []
            if self._queue is not None:
                try:
                    n = self._queue.qsize()
                    items = self._queue.get_nowait_batch(n) if n else []
                except (queue_mod.Empty, RayError):  # the queue actor may be gone at shutdown
                    items = []
            pending, self._retry = self._retry + list(items), []
            for i, item in enumerate(pending):
                try:
                    self._write(item)
                except Exception as e:  # noqa: BLE001 -- MLflow down or refusing a call: keep it and every later item
                    self.failures += 1
                    _log.warning("MLflow write failed (%s: %s); %d item(s) kept and retried", type(e).__name__,
                                 str(e)[:200], len(pending) - i)
                    self._retry = pending[i:]
                    break

    def _write(self, item: tuple) -> None:
        kind, run_id, payload, step, ts = item
        if kind == "progress":
            if self.progress is not None and self._steps.get(run_id):
                self.progress.task(self._steps[run_id], payload["done"], payload["total"], payload["info"])
            return
        lineage = self.tracking.lineage
        with self.tracking.lock:
            if kind == "metrics":
                lineage.log_metrics(run_id, payload, step, ts)
            elif kind == "params":
                lineage.log_params(run_id, payload)
            else:
                lineage.set_tags(run_id, payload)

    def close(self) -> None:
        if self._queue is None and not self._retry:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self._retry:  # one last try, then keep them on disk rather than drop them
            self.flush()
        if self._retry:
            path = self.home / "logs" / "undelivered-metrics.jsonl"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a") as f:
                f.writelines(json.dumps({"kind": k, "run_id": r, "payload": p, "step": st, "ts": ts}) + "\n"
                             for k, r, p, st, ts in self._retry)
            _log.warning("%d metric/param/tag item(s) could not be written to MLflow; kept in %s",
                         len(self._retry), path)
            self._retry = []
        if self._queue is not None:
            self._queue.shutdown()
            self._queue = None


__all__ = ["MetricSink"]
