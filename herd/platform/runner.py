"""The flow runner: a DAG of steps run on Ray, cached by key, resumable, tracked in MLflow, shown live.

    from herd.platform.runner import Runner, Step, Resources, StepContext
    from herd.platform.runtime import Runtime

    runner = Runner(Runtime(recipe.runtime))
    runner.plan(steps)                  # [PlanEntry(step, action "run"|"reuse", reasons)]
    result = runner.run(steps)          # runs what is not cached; raises StepFailed on a failing step
    runner.run(steps, force=["pretrain.train"])   # re-run from scratch even when cached (`herd run --force`)

Pipeline semantics: ``steps`` is the union of the registered flows' steps; ``targets`` (step names) limits the run
to those plus every upstream step they need (reused when cached). Independent steps run concurrently: a step
runs as a Ray task (``Resources`` -> num_cpus/num_gpus/memory) or, with ``in_driver=True``, in the driver.
After a failure the steps already running finish (and are cached), nothing new starts, and ``StepFailed`` is
raised; the next run reuses every finished step and restarts the failed one (from ``ctx.checkpoint_dir`` /
``ctx.train_run_name`` where it saved progress). Only this driver writes MLflow.

A failing step's full traceback is printed, saved as ``error/traceback.txt`` of its MLflow run and under
``$HERD_HOME/logs/steps/``; ``StepFailed`` is one line naming the step and that file. Each executed step holds a
lease (``herd.platform.lease``) so two runs on one store never run the same step at once. A step with
``verify_reuse`` is reused only when that check (run here, in the driver) finds its outputs still good.
"""

from __future__ import annotations

import logging
import queue as queue_mod
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.platform import cache
from herd.platform.errors import FlowError, StepFailed
from herd.platform.lease import LeaseHeld, StepLease
from herd.platform.lineage import LineageRecorder
from herd.platform.mlflow_views import ui_command
from herd.platform.progress import Progress
from herd.platform.runtime import Runtime
from herd.platform.step import MetricLogger, Resources, Step, StepContext
from herd.platform.store import Artifact, ArtifactStore, safe_key

_log = logging.getLogger("herd.runner")

__all__ = ["PlanEntry", "Resources", "RunResult", "Runner", "Step", "StepContext", "order_steps", "summarize"]


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


def summarize(entries: list[PlanEntry], min_steps: int = 2) -> list[str]:
    """One line per cause shared by several steps that will run, most steps first, e.g.
    ``torch 2.13.0 -> 2.13.0+cpu: 9 steps re-run`` (what ``herd plan`` prints above its table)."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.action == "run":
            for r in dict.fromkeys(e.reasons):
                if not r.startswith("upstream "):
                    counts[r] = counts.get(r, 0) + 1
    shared = sorted((n, r) for r, n in counts.items() if n >= min_steps)
    return [f"{r}: {n} steps re-run" for n, r in sorted(shared, key=lambda x: -x[0])]


@dataclass
class RunResult:
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step -> output -> digest
    flow_runs: dict[str, str] = field(default_factory=dict)  # flow -> MLflow run id
    records: dict[str, cache.StepRecord] = field(default_factory=dict)
    relinked: dict[str, str] = field(default_factory=dict)  # reused step -> run re-recorded in this MLflow
    duration_s: float = 0.0


def _execute_body(step: Step, store: ArtifactStore, inputs: dict[str, Artifact], rec: cache.StepRecord,
                  run_id: str, flow_run_id: str, logger: MetricLogger, tracking_uri: str, home: str,
                  attempt: str = "") -> dict[str, Any]:
    """Run one step and commit its outputs. Runs inside a Ray task or in the driver; never touches MLflow."""
    from pathlib import Path

    ctx = StepContext(step=step, store=store, inputs=inputs, run_id=run_id, flow_run_id=flow_run_id,
                      cache_key=rec.key, logger=logger, tracking_uri=tracking_uri, home=Path(home),
                      attempt=attempt)
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
        return {"outputs": manifests, "sources": ctx.sources, "artifacts": ctx.artifacts}
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
    def plan(self, steps: Iterable[Step], targets: Iterable[str] | None = None,
             force: Iterable[str] = ()) -> list[PlanEntry]:
        """For each needed step: reuse or run, and why. Reads the store only; starts nothing."""
        ordered = order_steps(steps, targets)
        forced = _check_force(ordered, force)
        entries: list[PlanEntry] = []
        known: dict[str, dict[str, str]] = {}  # step -> output -> digest (only for steps that will be reused)
        for step in ordered:
            pending_up = sorted(u for u in step.upstream() if u not in known)
            if pending_up:  # inputs unknown until upstream runs; still name this step's own changes
                rec = cache.components(step, {})
                last = cache.latest_record(self.store, step.name)
                own = cache.changes(last, rec, inputs=False) if last is not None else []
                entries.append(PlanEntry(step.name, "run", [f"upstream {u} will run (its outputs may change)"
                                                            for u in pending_up] + own))
                continue
            rec = cache.components(step, self._input_digests(step, known))
            if step.name in forced:
                entries.append(PlanEntry(step.name, "run", ["forced (--force): from scratch, fresh Ray Train run"],
                                         rec.key))
                continue
            done, why = self._reusable(step, rec)
            if done is not None:
                known[step.name] = done.outputs
                entries.append(PlanEntry(step.name, "reuse", why, rec.key))
            else:
                entries.append(PlanEntry(step.name, "run", why, rec.key))
        return entries

    def _reusable(self, step: Step, rec: cache.StepRecord) -> tuple[cache.StepRecord | None, list[str]]:
        """The finished record to reuse for ``rec`` (None if the step must run) and why."""
        done = cache.cached(self.store, rec)
        if done is None:
            return None, cache.explain(self.store, rec)
        if step.verify_reuse is not None:
            try:
                outputs = {name: self.store.get(digest) for name, digest in done.outputs.items()}
                reason = step.verify_reuse(outputs)
            except Exception as e:  # noqa: BLE001 -- a check that cannot run cannot vouch for the outputs: re-run
                reason = f"verify_reuse failed: {type(e).__name__}: {e}"
            if reason:
                return None, [str(reason)]
        return done, [f"finished in run {done.run_id}"]

    @staticmethod
    def _input_digests(step: Step, known: dict[str, dict[str, str]]) -> dict[str, str]:
        out = {}
        for local, ref in step.inputs.items():
            up, name = ref.rsplit(".", 1)
            out[local] = known[up][name]
        return out

    # ---------------------------------------------------------------------------------------------- run
    def run(self, steps: Iterable[Step], targets: Iterable[str] | None = None, recipe_source: str = "",
            force: Iterable[str] = (), lease_wait_s: float = 0.0, recipe: Any = None) -> RunResult:
        """Run what is not cached. ``force``: step names to re-run from scratch (fresh Ray Train run) even when
        cached; their dependents re-run only if the forced outputs' digests change. ``lease_wait_s``: how long to
        wait for a step another herd process is running on this store before refusing (``LeaseHeld``).
        ``recipe``: the resolved Recipe, kept (secrets redacted) as each flow run's ``recipe.yaml``."""
        self.recipe = recipe
        recipe_source = recipe_source or getattr(recipe, "source", "")
        ordered = order_steps(steps, targets)
        forced = _check_force(ordered, force)
        t0 = time.monotonic()
        result = RunResult()
        self.rt.prepare()  # Ray itself starts only when a step has to run: a cached pipeline takes seconds
        progress = Progress([s.name for s in ordered], enabled=self.show_progress)
        progress.header(tracking=self.rt.tracking_uri, store=self.store.root, ui=ui_command(recipe_source))
        sink = _MetricSink(self, progress)
        known: dict[str, dict[str, str]] = {}
        remaining = list(ordered)
        running: dict[Future, Step] = {}
        failures: list[FlowError] = []
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
                            done, why = ((None, ["forced (--force)"]) if step.name in forced
                                         else self._reusable(step, rec))
                            if done is not None:
                                known[step.name] = done.outputs
                                result.reused.append(step.name)
                                result.records[step.name] = done
                                progress.update(step.name, "reused", where=f"run {done.run_id}")
                                self._link_reused(step, done, recipe_source, result)
                                continue
                            progress.update(step.name, "queued", where="; ".join(why))  # why it runs
                            self._ensure_ray(progress)
                            fut = pool.submit(self._execute, step, rec, sink, recipe_source, result, progress,
                                              step.name in forced, lease_wait_s)
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
                            rec, reused = fut.result()
                        except StepFailed as e:
                            failures.append(e)
                            progress.update(step.name, "failed", where=getattr(e, "log_path", "") or None)
                            continue
                        except LeaseHeld as e:
                            failures.append(e)
                            progress.update(step.name, "refused", where=f"held by pid {e.holder.get('pid')} "
                                            f"on {e.holder.get('host')}")
                            continue
                        known[step.name] = rec.outputs
                        (result.reused if reused else result.executed).append(step.name)
                        result.records[step.name] = rec
                        progress.update(step.name, "reused" if reused else "done",
                                        where=f"run {rec.run_id}" if reused else None)
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
                self._finish_flow(flow, run_id, ordered, recipe_source, result)
                self.lineage.end_run(run_id, "FAILED" if any(getattr(f, "step", "").startswith(flow + ".")
                                                             for f in failures) else "FINISHED")
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
                result.flow_runs[flow] = self.lineage.start_flow_run(
                    flow, {"herd.recipe": recipe_source}, recipe=getattr(self, "recipe", None),
                    ray=self._ray_tags())
            return result.flow_runs[flow]

    def _ray_tags(self) -> dict[str, str]:
        """The Ray job this driver is and its dashboard, for MLflow runs (empty before Ray starts)."""
        if self.rt.ray is None:
            return {}
        import ray

        tags = {"herd.ray.dashboard": self.rt.ray.dashboard_url, "herd.ray.address": self.rt.ray.address,
                "herd.ray.job_name": self.rt.ray.job_name}
        try:
            tags["herd.ray.job_id"] = ray.get_runtime_context().get_job_id()
        except (RuntimeError, AttributeError):  # Ray not initialized in this process
            pass
        if tags.get("herd.ray.dashboard") and tags.get("herd.ray.job_id"):
            tags["herd.ray.job_url"] = f"{tags['herd.ray.dashboard'].rstrip('/')}/#/jobs/{tags['herd.ray.job_id']}"
        return {k: v for k, v in tags.items() if v}

    def _link_reused(self, step: Step, done: cache.StepRecord, recipe_source: str, result: RunResult) -> None:
        """A reused step stays part of the lineage: if this MLflow has no run that made its outputs (a new
        ``--tracking-uri``, a wiped database), re-record it here, tagged with where it really ran."""
        try:
            with self._lock:
                if self.lineage.producer_run(done.outputs) is not None:
                    return
                flow_run = self._flow_run(step.flow, recipe_source, result)
                inputs = {local: self.store.get(done.inputs[local]) for local in step.inputs}
                outputs = {n: self.store.get(d) for n, d in done.outputs.items()}
                run_id, _ = self.lineage.record_reused(
                    flow_run, step.name, done.config, done.key, inputs, outputs, step.roles, recipe_source,
                    {"run_id": done.run_id or "", "tracking_uri": done.tracking_uri or ""})
                result.relinked[step.name] = run_id
        except Exception as e:  # noqa: BLE001 -- lineage is a record, not the work: never stops the run
            _log.warning("could not link reused step %s into MLflow lineage: %s", step.name, e)

    def _finish_flow(self, flow: str, run_id: str, ordered: list[Step], recipe_source: str,
                     result: RunResult) -> None:
        """The flow run's summary (params, headline metrics, what ran and what was reused)."""
        names = [s.name for s in ordered if s.flow == flow]
        ran = [(n, result.records[n].run_id or "", result.records[n].duration_s or 0.0)
               for n in names if n in result.executed and n in result.records]
        reused = [(n, result.relinked.get(n) or result.records[n].run_id or "")
                  for n in names if n in result.reused and n in result.records]
        configs = {n: result.records[n].config for n in names if n in result.records}
        try:
            with self._lock:
                self.lineage.finish_flow_run(run_id, flow, recipe_source, ran, reused, configs)
        except Exception as e:  # noqa: BLE001 -- the summary is a record, never a reason to fail the run
            _log.warning("could not write the summary of flow run %s: %s", run_id, e)

    def _execute(self, step: Step, rec: cache.StepRecord, sink: _MetricSink, recipe_source: str,
                 result: RunResult, progress: Progress, forced: bool, lease_wait_s: float
                 ) -> tuple[cache.StepRecord, bool]:
        """Run one step under its lease; returns (record, reused): another run may have finished it meanwhile."""
        def waiting(holder: dict[str, Any]) -> None:
            progress.update(step.name, "waiting", where=f"lease held by pid {holder.get('pid')} on "
                            f"{holder.get('host')}")

        with StepLease(self.store, step.name, wait_s=lease_wait_s, on_wait=waiting):
            if not forced:
                done, _ = self._reusable(step, rec)
                if done is not None:
                    return done, True
            if forced:  # a fresh attempt: fresh Ray Train run name and checkpoint dir; the old record stays
                attempt = uuid.uuid4().hex[:8]  # unusable until this attempt finishes
                cache.mark_forced(self.store, step.name, rec.key, attempt)
            else:  # resume the attempt of a forced run that did not finish, if any
                attempt = (cache.forced_attempt(self.store, step.name, rec.key) or {}).get("attempt", "")
            done = self._execute_leased(step, rec, sink, recipe_source, result, progress, attempt)
            cache.clear_forced(self.store, step.name, rec.key)
            return done, False

    def _execute_leased(self, step: Step, rec: cache.StepRecord, sink: _MetricSink, recipe_source: str,
                        result: RunResult, progress: Progress, attempt: str) -> cache.StepRecord:
        t0 = time.monotonic()
        inputs = {local: self.store.get(rec.inputs[local]) for local in step.inputs}
        with self._lock:  # MLflow sqlite: keep this driver's writes sequential
            flow_run = self._flow_run(step.flow, recipe_source, result)
            run_id = self.lineage.start_step_run(flow_run, step.name, rec.config, rec.key, rec.inputs,
                                                 description=step.description, ray=self._ray_tags())
            model_ids = {a.digest: mid for a in inputs.values() if a.kind == "model"
                         for mid in [self.lineage.model_id_for(a.digest)] if mid}
            self.lineage.log_inputs(run_id, inputs, model_ids)
            if attempt:
                self.lineage.set_tags(run_id, {"herd.attempt": attempt})
        progress.update(step.name, "running", where=self.lineage.run_url(run_id))
        logger = sink.logger(run_id, step.name)
        args = (step, self.store, inputs, rec, run_id, flow_run, logger, self.rt.tracking_uri, str(self.rt.home),
                attempt)
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
        except Exception as e:  # the step's own error (any type): recorded, shown, re-raised as StepFailed
            sink.flush()
            raise self._failed(step, run_id, e, progress) from e
        sink.flush()
        outputs = {name: Artifact(self.store, m) for name, m in out["outputs"].items()}
        try:  # a step whose outputs cannot be recorded has failed: its run says so and no LoggedModel stays
            with self._lock:
                self.lineage.discard_dead_attempts(step.name, run_id)  # we hold the lease: the others are dead
                self.lineage.log_sources(run_id, out["sources"])
                self._log_artifacts(run_id, out.get("artifacts", []))
                model_ids = self.lineage.record_outputs(run_id, step.name, outputs, step.roles, recipe_source,
                                                        inputs)
                self.lineage.end_run(run_id, "FINISHED")
        except Exception as e:  # MLflow refusing a write, of any type: the step failed
            raise self._failed(step, run_id, e, progress) from e
        rec.outputs = {n: a.digest for n, a in outputs.items()}
        rec.models = model_ids
        rec.run_id, rec.flow_run_id, rec.tracking_uri = run_id, flow_run, self.rt.tracking_uri
        rec.duration_s = time.monotonic() - t0
        cache.save_record(self.store, rec)  # last: the step counts as finished only once this exists
        return rec

    def _failed(self, step: Step, run_id: str, e: BaseException, progress: Progress) -> StepFailed:
        """Show the full traceback, keep it as a log file and an MLflow artifact, and make the one-line error."""
        tb = "".join(traceback.format_exception(e))
        log_path = self.rt.home / "logs" / "steps" / f"{step.name}-{run_id[:8]}.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(tb)
        except OSError as oe:
            _log.warning("could not write %s: %s", log_path, oe)
        with self._lock:
            try:
                self.lineage.set_tags(run_id, {"herd.error": "".join(traceback.format_exception_only(e))[-4000:]})
                self.lineage.client.log_text(run_id, tb, "error/traceback.txt")
                self.lineage.end_run(run_id, "FAILED")
            except Exception as me:  # noqa: BLE001 -- MLflow down must not hide the step's own error
                _log.warning("could not record the failure of %s in MLflow: %s", step.name, me)
        progress.failure(step.name, tb)
        cause = getattr(e, "cause", None) or e  # RayTaskError wraps the step's own exception
        text = str(cause).strip()
        last = text.splitlines()[-1] if text else ""
        err = StepFailed(step.name, f"{type(cause).__name__}: {last} (traceback above and in {log_path})")
        err.log_path, err.traceback = str(log_path), tb  # type: ignore[attr-defined]
        return err

    def _log_artifacts(self, run_id: str, files: list[tuple[str, str, bytes]]) -> None:
        """Files a step attached with ``ctx.log_artifacts``, written to its MLflow run from the driver."""
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="herd-mlflow-") as tmp:
            for dest, rel, data in files:
                path = Path(tmp, safe_key(f"{dest}/{rel}"))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(data)
            for dest in sorted({d for d, _, _ in files}):
                self.lineage.client.log_artifacts(run_id, str(Path(tmp, safe_key(dest))), artifact_path=dest)


def _check_force(ordered: list[Step], force: Iterable[str]) -> set[str]:
    """``--force`` names: step names (``pretrain.train``) or flow names (``pretrain``: all its steps)."""
    names = {s.name for s in ordered}
    flows = {s.flow for s in ordered}
    out: set[str] = set()
    for f in force:
        if f in names:
            out.add(f)
        elif f in flows:
            out.update(s.name for s in ordered if s.flow == f)
        else:
            raise FlowError(f"--force {f!r} names no step or flow of this run; steps: {', '.join(sorted(names))}")
    return out


class _MetricSink:
    """Carries metrics from steps (Ray tasks, Ray Train workers, the driver) to MLflow, written by the driver.

    One ``ray.util.queue.Queue`` actor (0 CPUs) per run, created on first use; a driver thread drains it. A failing
    MLflow call never stops the relay and never drops an item: it is logged, the item stays queued (in order) and
    is retried on the next drain; what still cannot be written when the run ends goes to
    ``$HERD_HOME/logs/undelivered-metrics.jsonl``, named in a warning. Progress items update the terminal.
    """

    def __init__(self, runner: Runner, progress: Progress | None = None):
        self.runner = runner
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
        lineage = self.runner.lineage
        with self.runner._lock:
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
            import json

            path = self.runner.rt.home / "logs" / "undelivered-metrics.jsonl"
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
