"""Running one step: under its lease, in its own MLflow step run, in the driver or as a Ray task; its outputs
committed as content-addressed artifacts and its cache record saved last; a failure shown, kept and recorded.

    executor = StepExecutor(runtime, store, tracking, book, sink, progress)   # one per Runner.run
    record, reused = executor.execute(step, rec, forced=False, lease_wait_s=0.0)

``execute_body`` is the part that runs where the step runs (a Ray worker, or the driver for ``in_driver`` steps):
it calls the step function with its StepContext and commits the outputs; it never touches MLflow. Everything else
here runs in the driver. A failing step's traceback is printed, saved under ``$HERD_HOME/logs/steps/`` and as
``error/traceback.txt`` of its MLflow run, and comes back as a one-line ``StepFailed``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import traceback
import uuid
from pathlib import Path
from typing import Any

from herd.platform import cache
from herd.platform.errors import FlowError, StepFailed
from herd.platform.lease import StepLease
from herd.platform.metric_sink import MetricSink
from herd.platform.plan import reusable
from herd.platform.progress import Progress
from herd.platform.runs import RunBook, Tracking
from herd.platform.runtime import Runtime
from herd.platform.step import MetricLogger, Step, StepContext
from herd.platform.store import Artifact, ArtifactStore, safe_key

_log = logging.getLogger("herd.runner")


def execute_body(step: Step, store: ArtifactStore, inputs: dict[str, Artifact], rec: cache.StepRecord,
                 run_id: str, flow_run_id: str, logger: MetricLogger, tracking_uri: str, home: str,
                 attempt: str = "") -> dict[str, Any]:
    """Run one step and commit its outputs. Runs inside a Ray task or in the driver; never touches MLflow."""
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


class StepExecutor:
    """Executes the steps of one ``Runner.run`` (called from its step threads)."""

    def __init__(self, runtime: Runtime, store: ArtifactStore, tracking: Tracking, book: RunBook,
                 sink: MetricSink, progress: Progress) -> None:
        self.rt, self.store, self.tracking, self.book = runtime, store, tracking, book
        self.sink, self.progress = sink, progress

    def execute(self, step: Step, rec: cache.StepRecord, forced: bool, lease_wait_s: float
                ) -> tuple[cache.StepRecord, bool]:
        """Run one step under its lease; returns (record, reused): another run may have finished it meanwhile."""
        def waiting(holder: dict[str, Any]) -> None:
            self.progress.update(step.name, "waiting", where=f"lease held by pid {holder.get('pid')} on "
                                 f"{holder.get('host')}")

        with StepLease(self.store, step.name, wait_s=lease_wait_s, on_wait=waiting):
            if not forced:
                done, _ = reusable(self.store, step, rec)
                if done is not None:
                    return done, True
            if forced:  # a fresh attempt: fresh Ray Train run name and checkpoint dir; the old record stays
                attempt = uuid.uuid4().hex[:8]  # unusable until this attempt finishes
                cache.mark_forced(self.store, step.name, rec.key, attempt)
            else:  # resume the attempt of a forced run that did not finish, if any
                attempt = (cache.forced_attempt(self.store, step.name, rec.key) or {}).get("attempt", "")
            done = self._execute_leased(step, rec, attempt)
            cache.clear_forced(self.store, step.name, rec.key)
            return done, False

    def _execute_leased(self, step: Step, rec: cache.StepRecord, attempt: str) -> cache.StepRecord:
        t0 = time.monotonic()
        inputs = {local: self.store.get(rec.inputs[local]) for local in step.inputs}
        lineage = self.tracking.lineage
        with self.tracking.lock:  # MLflow sqlite: keep this driver's writes sequential
            flow_run = self.book.flow_run(step.flow)
            run_id = lineage.start_step_run(flow_run, step.name, rec.config, rec.key, rec.inputs,
                                            description=step.description, ray=self.book.ray_tags())
            model_ids = {a.digest: mid for a in inputs.values() if a.kind == "model"
                         for mid in [lineage.model_id_for(a.digest)] if mid}
            lineage.log_inputs(run_id, inputs, model_ids)
            if attempt:
                lineage.set_tags(run_id, {"herd.attempt": attempt})
        self.progress.update(step.name, "running", where=lineage.run_url(run_id))
        logger = self.sink.logger(run_id, step.name)
        args = (step, self.store, inputs, rec, run_id, flow_run, logger, self.rt.tracking_uri, str(self.rt.home),
                attempt)
        try:
            if step.in_driver:
                out = execute_body(*args)
            else:
                import ray

                from herd.platform.runtime import with_credentials

                # runtime_env (shown on the Ray dashboard) carries only non-secret settings; AWS keys travel as a
                # task argument and are set in the worker by with_credentials.
                env = self.rt.task_env()
                remote = ray.remote(with_credentials).options(
                    name=step.name, max_retries=0, runtime_env={"env_vars": env} if env else None,
                    **step.resources.ray_options())
                out = ray.get(remote.remote(self.rt.credentials(), execute_body, *args))
        except Exception as e:  # the step's own error (any type): recorded, shown, re-raised as StepFailed
            self.sink.flush()
            raise self._failed(step, run_id, e) from e
        self.sink.flush()
        outputs = {name: Artifact(self.store, m) for name, m in out["outputs"].items()}
        try:  # a step whose outputs cannot be recorded has failed: its run says so and no LoggedModel stays
            with self.tracking.lock:
                lineage.discard_dead_attempts(step.name, run_id)  # we hold the lease: the others are dead
                lineage.log_sources(run_id, out["sources"])
                self._log_artifacts(run_id, out.get("artifacts", []))
                model_ids = lineage.record_outputs(run_id, step.name, outputs, step.roles, self.book.recipe_source,
                                                   inputs)
                lineage.end_run(run_id, "FINISHED")
        except Exception as e:  # MLflow refusing a write, of any type: the step failed
            raise self._failed(step, run_id, e) from e
        rec.outputs = {n: a.digest for n, a in outputs.items()}
        rec.models = model_ids
        rec.run_id, rec.flow_run_id, rec.tracking_uri = run_id, flow_run, self.rt.tracking_uri
        rec.duration_s = time.monotonic() - t0
        cache.save_record(self.store, rec)  # last: the step counts as finished only once this exists
        return rec

    def _failed(self, step: Step, run_id: str, e: BaseException) -> StepFailed:
        """Show the full traceback, keep it as a log file and an MLflow artifact, and make the one-line error."""
        tb = "".join(traceback.format_exception(e))
        log_path = self.rt.home / "logs" / "steps" / f"{step.name}-{run_id[:8]}.log"
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log_path.write_text(tb)
        except OSError as oe:
            _log.warning("could not write %s: %s", log_path, oe)
        with self.tracking.lock:
            try:
                lineage = self.tracking.lineage
                lineage.set_tags(run_id, {"herd.error": "".join(traceback.format_exception_only(e))[-4000:]})
                lineage.client.log_text(run_id, tb, "error/traceback.txt")
                lineage.end_run(run_id, "FAILED")
            except Exception as me:  # noqa: BLE001 -- MLflow down must not hide the step's own error
                _log.warning("could not record the failure of %s in MLflow: %s", step.name, me)
        self.progress.failure(step.name, tb)
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
                self.tracking.lineage.client.log_artifacts(run_id, str(Path(tmp, safe_key(dest))),
                                                           artifact_path=dest)


__all__ = ["StepExecutor", "execute_body"]
