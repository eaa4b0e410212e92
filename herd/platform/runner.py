"""The flow runner: a DAG of steps run on Ray, cached by key, resumable, tracked in MLflow, shown live.

    from herd.platform.runner import Runner, Step, Resources, StepContext
    from herd.platform.runtime import Runtime

    runner = Runner(Runtime(recipe.runtime))
    runner.plan(steps)                  # [PlanEntry(step, action "run"|"reuse", reasons)]
    result = runner.run(steps)          # runs what is not cached; raises StepFailed on a failing step

Pipeline semantics: ``steps`` is the union of the registered flows' steps; ``targets`` (step names) limits the run
to those plus every upstream step they need (reused when cached). Independent steps run concurrently: a step
runs as a Ray task (``Resources`` -> num_cpus/num_gpus/memory) or, with ``in_driver=True``, in the driver.
After a failure the steps already running finish (and are cached), nothing new starts, and ``StepFailed`` is
raised; the next run reuses every finished step and restarts the failed one (from ``ctx.checkpoint_dir`` /
``ctx.train_run_name`` where it saved progress). Only this driver writes MLflow.
"""

from __future__ import annotations

import queue as queue_mod
import threading
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from herd.platform import cache
from herd.platform.errors import FlowError, StepFailed
from herd.platform.lineage import LineageRecorder
from herd.platform.progress import Progress
from herd.platform.runtime import Runtime
from herd.platform.step import MetricLogger, Resources, Step, StepContext
from herd.platform.store import Artifact, ArtifactStore

__all__ = ["PlanEntry", "Resources", "RunResult", "Runner", "Step", "StepContext", "order_steps"]


def order_steps(steps: Iterable[Step], targets: Iterable[str] | None = None) -> list[Step]:
    """Validate the DAG (unique names, known inputs, no cycles) and return the needed steps in topo order."""
    by_name: dict[str, Step] = {}
    for s in steps:
        if s.name in by_name:
            raise FlowError(f"two steps are named {s.name!r}; step names must be unique across flows")
        by_name[s.name] = s
    for s in by_name.values():
        for local, ref in s.inputs.items():
            up, out = ref.rsplit(".", 1)
            if up not in by_name:
                raise FlowError(f"step {s.name}: input {local} = {ref!r} names no step; known steps: "
                                f"{', '.join(sorted(by_name))}")
            if out not in by_name[up].outputs:
                raise FlowError(f"step {s.name}: input {local} = {ref!r}: step {up} has no output {out!r} "
                                f"(outputs: {', '.join(by_name[up].outputs) or 'none'})")
    wanted = set(by_name) if targets is None else set()
    stack = list(targets or [])
    while stack:
        name = stack.pop()
        if name not in by_name:
            raise FlowError(f"unknown step {name!r}; known steps: {', '.join(sorted(by_name))}")
        if name not in wanted:
            wanted.add(name)
            stack.extend(by_name[name].upstream())
    order: list[Step] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise FlowError(f"steps form a cycle: {' -> '.join((*trail, name))}")
        state[name] = 1
        for up in sorted(by_name[name].upstream()):
            visit(up, (*trail, name))
        state[name] = 2
        order.append(by_name[name])

    for s in by_name.values():  # registration order, so flows keep pipeline order
        if s.name in wanted:
            visit(s.name, ())
    return order


@dataclass
class PlanEntry:
    step: str
    action: str  # "run" | "reuse"
    reasons: list[str] = field(default_factory=list)
    key: str | None = None


@dataclass
class RunResult:
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step -> output -> digest
    flow_runs: dict[str, str] = field(default_factory=dict)  # flow -> MLflow run id
    records: dict[str, cache.StepRecord] = field(default_factory=dict)
    duration_s: float = 0.0


def _execute_body(step: Step, store: ArtifactStore, inputs: dict[str, Artifact], rec: cache.StepRecord,
                  run_id: str, flow_run_id: str, logger: MetricLogger, tracking_uri: str, home: str
                  ) -> dict[str, Any]:
    """Run one step and commit its outputs. Runs inside a Ray task or in the driver; never touches MLflow."""
    from pathlib import Path

    ctx = StepContext(step=step, store=store, inputs=inputs, run_id=run_id, flow_run_id=flow_run_id,
                      cache_key=rec.key, logger=logger, tracking_uri=tracking_uri, home=Path(home))
    try:
        step.fn(ctx)
        staged = ctx.staged_outputs()
        missing = [o for o in step.outputs if o not in staged]
        if missing:
            raise FlowError(f"step {step.name} returned without producing output(s) {', '.join(missing)}; "
                            "call ctx.output_dir(name) for each declared output")
        parents = sorted(a.digest for a in inputs.values())
        manifests = {}
        for name, (path, fmt, meta) in staged.items():
            art = store.put_dir(path, kind=step.outputs[name], format=fmt, producer_run=run_id,
                                producer_step=step.name, parents=parents, config_hash=rec.key,
                                meta={"output": name, **meta})
            manifests[name] = art.manifest
        return {"outputs": manifests, "sources": ctx.sources}
    finally:
        ctx.cleanup()


class Runner:
    """Plans and runs steps against one Runtime (store + MLflow + Ray)."""

    def __init__(self, runtime: Runtime, progress: bool = True):
        self.rt = runtime
        self.store = runtime.artifact_store()
        self.show_progress = progress
        self._lineage: LineageRecorder | None = None
        self._lock = threading.RLock()  # _execute holds it while creating the flow run

    @property
    def lineage(self) -> LineageRecorder:
        if self._lineage is None:
            self._lineage = LineageRecorder(self.rt.tracking_uri, self.rt.experiment,
                                            self.rt.mlflow_artifact_location())
        return self._lineage

    # --------------------------------------------------------------------------------------------- plan
    def plan(self, steps: Iterable[Step], targets: Iterable[str] | None = None) -> list[PlanEntry]:
        """For each needed step: reuse or run, and why. Reads the store only; starts nothing."""
        entries: list[PlanEntry] = []
        known: dict[str, dict[str, str]] = {}  # step -> output -> digest (only for steps that will be reused)
        for step in order_steps(steps, targets):
            pending_up = sorted(u for u in step.upstream() if u not in known)
            if pending_up:
                entries.append(PlanEntry(step.name, "run", [f"upstream {u} will run (its outputs may change)"
                                                            for u in pending_up]))
                continue
            rec = cache.components(step, self._input_digests(step, known))
            done = cache.cached(self.store, rec)
            if done is not None:
                known[step.name] = done.outputs
                entries.append(PlanEntry(step.name, "reuse", [f"finished in run {done.run_id}"], rec.key))
            else:
                entries.append(PlanEntry(step.name, "run", cache.explain(self.store, rec), rec.key))
        return entries

    @staticmethod
    def _input_digests(step: Step, known: dict[str, dict[str, str]]) -> dict[str, str]:
        out = {}
        for local, ref in step.inputs.items():
            up, name = ref.rsplit(".", 1)
            out[local] = known[up][name]
        return out

    # ---------------------------------------------------------------------------------------------- run
    def run(self, steps: Iterable[Step], targets: Iterable[str] | None = None, recipe_source: str = "",
            ) -> RunResult:
        ordered = order_steps(steps, targets)
        t0 = time.monotonic()
        result = RunResult()
        self.rt.prepare()  # Ray itself starts only when a step has to run: a cached pipeline takes seconds
        progress = Progress([s.name for s in ordered], enabled=self.show_progress)
        progress.header(tracking=self.rt.tracking_uri, store=self.store.root)
        sink = _MetricSink(self)
        known: dict[str, dict[str, str]] = {}
        remaining = list(ordered)
        running: dict[Future, Step] = {}
        failures: list[StepFailed] = []
        aborted = False
        pool = ThreadPoolExecutor(max_workers=max(1, len(ordered)), thread_name_prefix="herd-step")
        try:
            with progress:
                while remaining or running:
                    while not failures:  # repeat: a reused step can make its dependents ready at once
                        ready = [s for s in remaining if all(u in known for u in s.upstream())]
                        if not ready:
                            break
                        for step in ready:
                            remaining.remove(step)
                            rec = cache.components(step, self._input_digests(step, known))
                            done = cache.cached(self.store, rec)
                            if done is not None:
                                known[step.name] = done.outputs
                                result.reused.append(step.name)
                                result.records[step.name] = done
                                progress.update(step.name, "reused", where=f"run {done.run_id}")
                                continue
                            self._ensure_ray(progress)
                            fut = pool.submit(self._execute, step, rec, known, sink, recipe_source, result,
                                              progress)
                            running[fut] = step
                    if failures and remaining:
                        for step in remaining:
                            progress.update(step.name, "skipped")
                        remaining.clear()
                    if not running:
                        if remaining:  # defensive: order_steps guarantees progress
                            raise FlowError(f"steps {[s.name for s in remaining]} wait on inputs that never came")
                        break
                    finished, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                    progress.refresh()
                    for fut in finished:
                        step = running.pop(fut)
                        try:
                            rec = fut.result()
                        except StepFailed as e:
                            failures.append(e)
                            progress.update(step.name, "failed", where=str(e)[:80])
                            continue
                        known[step.name] = rec.outputs
                        result.executed.append(step.name)
                        result.records[step.name] = rec
                        progress.update(step.name, "done")
        except BaseException:  # Ctrl-C or a driver-side error: do not wait for running steps
            aborted = True
            for run_id in result.flow_runs.values():
                self.lineage.end_run(run_id, "KILLED")
            result.flow_runs.clear()
            raise
        finally:
            pool.shutdown(wait=not aborted, cancel_futures=aborted)
            sink.close()
            for flow, run_id in result.flow_runs.items():
                self.lineage.end_run(run_id, "FAILED" if any(f.step.startswith(flow + ".") for f in failures)
                                     else "FINISHED")
        result.outputs = known
        result.duration_s = time.monotonic() - t0
        if failures:
            raise failures[0]
        return result

    def _ensure_ray(self, progress: Progress) -> None:
        if self.rt.ray is None:
            info = self.rt.start()
            progress.ray(info.dashboard_url, info.token_path, info.log_path)

    def _flow_run(self, flow: str, recipe_source: str, result: RunResult) -> str:
        with self._lock:
            if flow not in result.flow_runs:
                result.flow_runs[flow] = self.lineage.start_flow_run(flow, {"herd.recipe": recipe_source})
            return result.flow_runs[flow]

    def _execute(self, step: Step, rec: cache.StepRecord, known: dict[str, dict[str, str]], sink: _MetricSink,
                 recipe_source: str, result: RunResult, progress: Progress) -> cache.StepRecord:
        t0 = time.monotonic()
        inputs = {local: self.store.get(rec.inputs[local]) for local in step.inputs}
        with self._lock:  # MLflow sqlite: keep this driver's writes sequential
            flow_run = self._flow_run(step.flow, recipe_source, result)
            run_id = self.lineage.start_step_run(flow_run, step.name, rec.config, rec.key, rec.inputs)
            model_ids = {a.digest: mid for a in inputs.values() if a.kind == "model"
                         for mid in [self.lineage.model_id_for(a.digest)] if mid}
            self.lineage.log_inputs(run_id, inputs, model_ids)
        progress.update(step.name, "running", where=self.lineage.run_url(run_id))
        logger = sink.logger(run_id)
        args = (step, self.store, inputs, rec, run_id, flow_run, logger, self.rt.tracking_uri, str(self.rt.home))
        try:
            if step.in_driver:
                out = _execute_body(*args)
            else:
                import ray

                from herd.platform.runtime import with_credentials

                # runtime_env (shown on the Ray dashboard) carries only non-secret settings; AWS keys travel as a
                # task argument and are set in the worker by with_credentials.
                env = self.rt.task_env()
                remote = ray.remote(with_credentials).options(
                    name=step.name, max_retries=0, runtime_env={"env_vars": env} if env else None,
                    **step.resources.ray_options())
                out = ray.get(remote.remote(self.rt.credentials(), _execute_body, *args))
        except Exception as e:  # the step's own error (any type): recorded, then re-raised as StepFailed
            sink.flush()
            with self._lock:
                self.lineage.set_tags(run_id, {"herd.error": "".join(traceback.format_exception_only(e))[-4000:]})
                self.lineage.end_run(run_id, "FAILED")
            cause = getattr(e, "cause", None) or e  # RayTaskError wraps the step's own exception
            text = str(cause).strip()
            last = text.splitlines()[-1] if text else ""
            raise StepFailed(step.name, f"{type(cause).__name__}: {last}") from e
        sink.flush()
        outputs = {name: Artifact(self.store, m) for name, m in out["outputs"].items()}
        with self._lock:
            self.lineage.log_sources(run_id, out["sources"])
            model_ids = self.lineage.record_outputs(run_id, step.name, outputs)
            self.lineage.end_run(run_id, "FINISHED")
        rec.outputs = {n: a.digest for n, a in outputs.items()}
        rec.models = model_ids
        rec.run_id, rec.flow_run_id, rec.tracking_uri = run_id, flow_run, self.rt.tracking_uri
        rec.duration_s = time.monotonic() - t0
        cache.save_record(self.store, rec)  # last: the step counts as finished only once this exists
        return rec


class _MetricSink:
    """Carries metrics from steps (Ray tasks, Ray Train workers, the driver) to MLflow, written by the driver.

    One ``ray.util.queue.Queue`` actor (0 CPUs) per run, created on first use; a driver thread drains it.
    """

    def __init__(self, runner: Runner):
        self.runner = runner
        self._queue: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._write_lock = threading.RLock()

    def logger(self, run_id: str) -> MetricLogger:
        with self._write_lock:  # steps start from several threads
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
        if self._queue is None:
            return
        from ray.exceptions import RayError
        with self._write_lock:
            try:
                n = self._queue.qsize()
                items = self._queue.get_nowait_batch(n) if n else []
            except (queue_mod.Empty, RayError):  # the queue actor may be gone at shutdown
                return
            lineage = self.runner.lineage
            for kind, run_id, payload, step, ts in items:
                with self.runner._lock:
                    if kind == "metrics":
                        lineage.log_metrics(run_id, payload, step, ts)
                    elif kind == "params":
                        lineage.log_params(run_id, payload)
                    else:
                        lineage.set_tags(run_id, payload)

    def close(self) -> None:
        if self._queue is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        self._queue.shutdown()
        self._queue = None
