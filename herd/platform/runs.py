"""A run's MLflow bookkeeping, written by the driver alone: the flow runs, the Ray job they ran in, reused steps
relinked into this MLflow, and the summary each flow run ends with; plus ``RunResult``, what ``Runner.run`` returns.

    tracking = Tracking(runtime)                          # the driver's MLflow writer and its lock
    book = RunBook(tracking, runtime, store, result, recipe_source, recipe)
    run_id = book.flow_run("pretrain")                    # the flow's MLflow run, created on first use
    book.link_reused(step, record)                        # a cached step stays part of this MLflow's lineage
    book.finish(ordered, failed_steps)                    # summaries; FINISHED, or FAILED where a step failed

Bookkeeping is a record, not the work: a failing summary or relink is a warning, never a failed run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from herd.platform import cache
from herd.platform.lineage import LineageRecorder
from herd.platform.runtime import Runtime
from herd.platform.step import Step
from herd.platform.store import ArtifactStore

_log = logging.getLogger("herd.runner")


@dataclass
class RunResult:
    executed: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # step -> output -> digest
    flow_runs: dict[str, str] = field(default_factory=dict)  # flow -> MLflow run id
    records: dict[str, cache.StepRecord] = field(default_factory=dict)
    relinked: dict[str, str] = field(default_factory=dict)  # reused step -> run re-recorded in this MLflow
    duration_s: float = 0.0


class Tracking:
    """The driver's MLflow writer: the LineageRecorder (made on first use: `herd plan` never needs it) and the lock
    that keeps this driver's writes sequential (MLflow on sqlite), shared by steps' threads and the metric sink."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime
        self.lock = threading.RLock()
        self._lineage: LineageRecorder | None = None

    @property
    def lineage(self) -> LineageRecorder:
        if self._lineage is None:
            self._lineage = LineageRecorder(self.rt.tracking_uri, self.rt.experiment,
                                            self.rt.mlflow_artifact_location())
        return self._lineage


class RunBook:
    """One ``Runner.run``'s flow runs (kept in ``result.flow_runs``) and what is written on them."""

    def __init__(self, tracking: Tracking, runtime: Runtime, store: ArtifactStore, result: RunResult,
                 recipe_source: str, recipe: Any = None) -> None:
        self.tracking, self.rt, self.store, self.result = tracking, runtime, store, result
        self.recipe_source, self.recipe = recipe_source, recipe

    @property
    def lineage(self) -> LineageRecorder:
        return self.tracking.lineage

    def flow_run(self, flow: str) -> str:
        """The flow's MLflow run, started on first use with the recipe (secrets redacted) and the Ray job."""
        with self.tracking.lock:
            if flow not in self.result.flow_runs:
                self.result.flow_runs[flow] = self.lineage.start_flow_run(
                    flow, {"herd.recipe": self.recipe_source}, recipe=self.recipe, ray=self.ray_tags())
            return self.result.flow_runs[flow]

    def ray_tags(self) -> dict[str, str]:
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

    def link_reused(self, step: Step, done: cache.StepRecord) -> None:
        """A reused step stays part of the lineage: if this MLflow has no run that made its outputs (a new
        ``--tracking-uri``, a wiped database), re-record it here, tagged with where it really ran."""
        try:
            with self.tracking.lock:
                if self.lineage.producer_run(done.outputs) is not None:
                    return
                flow_run = self.flow_run(step.flow)
                inputs = {local: self.store.get(done.inputs[local]) for local in step.inputs}
                outputs = {n: self.store.get(d) for n, d in done.outputs.items()}
                run_id, _ = self.lineage.record_reused(
                    flow_run, step.name, done.config, done.key, inputs, outputs, step.roles, self.recipe_source,
                    {"run_id": done.run_id or "", "tracking_uri": done.tracking_uri or ""})
                self.result.relinked[step.name] = run_id
        except Exception as e:  # noqa: BLE001 -- lineage is a record, not the work: never stops the run
            _log.warning("could not link reused step %s into MLflow lineage: %s", step.name, e)

    def end_killed(self) -> None:
        """Ctrl-C or a driver-side error: every flow run ends KILLED (no summary) and is forgotten."""
        for run_id in self.result.flow_runs.values():
            self.lineage.end_run(run_id, "KILLED")
        self.result.flow_runs.clear()

    def finish(self, ordered: list[Step], failed_steps: Iterable[str]) -> None:
        """Each flow run's summary (params, headline metrics, what ran and what was reused), then its end:
        FAILED when one of its steps failed, else FINISHED."""
        failed = list(failed_steps)
        for flow, run_id in self.result.flow_runs.items():
            self._summarize(flow, run_id, ordered)
            self.lineage.end_run(run_id, "FAILED" if any(s.startswith(flow + ".") for s in failed) else "FINISHED")

    def _summarize(self, flow: str, run_id: str, ordered: list[Step]) -> None:
        result = self.result
        names = [s.name for s in ordered if s.flow == flow]
        ran = [(n, result.records[n].run_id or "", result.records[n].duration_s or 0.0)
               for n in names if n in result.executed and n in result.records]
        reused = [(n, result.relinked.get(n) or result.records[n].run_id or "")
                  for n in names if n in result.reused and n in result.records]
        configs = {n: result.records[n].config for n in names if n in result.records}
        try:
            with self.tracking.lock:
                self.lineage.finish_flow_run(run_id, flow, self.recipe_source, ran, reused, configs)
        except Exception as e:  # noqa: BLE001 -- the summary is a record, never a reason to fail the run
            _log.warning("could not write the summary of flow run %s: %s", run_id, e)


__all__ = ["RunBook", "RunResult", "Tracking"]
