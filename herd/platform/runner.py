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

This module schedules; the parts live beside it: ``graph`` (DAG validation and order, ``--force`` names),
``plan`` (reuse or run, and why), ``execute`` (one step under its lease, in the driver or a Ray task, its
failure recorded), ``runs`` (the flow runs and their summaries, ``RunResult``) and ``metric_sink`` (what steps
log, relayed to MLflow by this driver). The names flows and tests import stay importable from here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from herd.platform import cache
from herd.platform.errors import FlowError, StepFailed
from herd.platform.execute import StepExecutor
from herd.platform.graph import forced_steps, input_digests, order_steps
from herd.platform.lease import LeaseHeld
from herd.platform.lineage import LineageRecorder
from herd.platform.metric_sink import MetricSink
from herd.platform.mlflow_views import ui_command
from herd.platform.plan import PlanEntry, plan_steps, reusable, summarize
from herd.platform.progress import Progress
from herd.platform.runs import RunBook, RunResult, Tracking
from herd.platform.runtime import Runtime
from herd.platform.step import Resources, Step, StepContext

__all__ = ["PlanEntry", "Resources", "RunResult", "Runner", "Step", "StepContext", "order_steps", "summarize"]


class Runner:
    """Plans and runs steps against one Runtime (store + MLflow + Ray)."""

    def __init__(self, runtime: Runtime, progress: bool = True):
        self.rt = runtime
        self.store = runtime.artifact_store()
        self.show_progress = progress
        self.tracking = Tracking(runtime)

    @property
    def lineage(self) -> LineageRecorder:
        return self.tracking.lineage

    def plan(self, steps: Iterable[Step], targets: Iterable[str] | None = None,
             force: Iterable[str] = ()) -> list[PlanEntry]:
        """For each needed step: reuse or run, and why. Reads the store only; starts nothing."""
        return plan_steps(self.store, steps, targets, force)

    def run(self, steps: Iterable[Step], targets: Iterable[str] | None = None, recipe_source: str = "",
            force: Iterable[str] = (), lease_wait_s: float = 0.0, recipe: Any = None) -> RunResult:
        """Run what is not cached. ``force``: step names to re-run from scratch (fresh Ray Train run) even when
        cached; their dependents re-run only if the forced outputs' digests change. ``lease_wait_s``: how long to
        wait for a step another herd process is running on this store before refusing (``LeaseHeld``).
        ``recipe``: the resolved Recipe, kept (secrets redacted) as each flow run's ``recipe.yaml``."""
        recipe_source = recipe_source or getattr(recipe, "source", "")
        ordered = order_steps(steps, targets)
        forced = forced_steps(ordered, force)
        t0 = time.monotonic()
        result = RunResult()
        self.rt.prepare()  # Ray itself starts only when a step has to run: a cached pipeline takes seconds
        progress = Progress([s.name for s in ordered], enabled=self.show_progress)
        progress.header(tracking=self.rt.tracking_uri, store=self.store.root, ui=ui_command(recipe_source))
        book = RunBook(self.tracking, self.rt, self.store, result, recipe_source, recipe)
        sink = MetricSink(self.tracking, self.rt.home, progress)
        executor = StepExecutor(self.rt, self.store, self.tracking, book, sink, progress)
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
                            rec = cache.components(step, input_digests(step, known))
                            done, why = ((None, ["forced (--force)"]) if step.name in forced
                                         else reusable(self.store, step, rec))
                            if done is not None:
                                known[step.name] = done.outputs
                                result.reused.append(step.name)
                                result.records[step.name] = done
                                progress.update(step.name, "reused", where=f"run {done.run_id}")
                                book.link_reused(step, done)
                                continue
                            progress.update(step.name, "queued", where="; ".join(why))  # why it runs
                            self._ensure_ray(progress)
                            fut = pool.submit(executor.execute, step, rec, step.name in forced, lease_wait_s)
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
            book.end_killed()
            raise
        finally:
            pool.shutdown(wait=not aborted, cancel_futures=aborted)
            sink.close()
            book.finish(ordered, [getattr(f, "step", "") for f in failures])
        result.outputs = known
        result.duration_s = time.monotonic() - t0
        if failures:
            raise failures[0]
        return result

    def _ensure_ray(self, progress: Progress) -> None:
        if self.rt.ray is None:
            info = self.rt.start()
            progress.ray(info.dashboard_url, info.token_path, info.log_path)
