"""Lineage in MLflow, the write side: ``LineageRecorder`` (driver only, ``MlflowClient``). The read side (walk up /
down, rendering) is ``herd.platform.lineage_read``, re-exported here.

Every flow run is an MLflow run with Source (the command), the resolved recipe as ``recipe.yaml`` (secrets
redacted), the Ray job id and dashboard, and at the end a summary: params (its steps' config sections), headline
metrics and a description of what ran and what was reused, with links. Every step is a nested run (tag
``mlflow.parentRunId``) with params = the flattened config section, its metrics, its description, and tags
``herd.step``, ``herd.cache_key``, ``herd.inputs`` / ``herd.outputs`` (JSON name -> digest, what the reader
walks) plus one ``herd.output.<name>`` / ``herd.input.<name>`` tag per artifact. Datasets are MLflow dataset
entries named like the CLI names them (``data.pack.pretrain``) with a profile (rows, tokens, files, bytes) and,
for parquet, a schema: inputs of their consumers (context ``input``) and of the step that made them (context
``output``: MLflow has no dataset outputs); raw sources have context ``source``. A tokenizer or a model is never
listed as a dataset. Models are MLflow 3 LoggedModels named by role (``<recipe>-<role>``, see
``herd.platform.roles``) whose page carries params, final metrics tied to the datasets they were measured on,
the parent model and the models made from it, the files (or a pointer into herd's store); they are linked as
outputs of the step run (``log_outputs``: creating a model does not link it) and as inputs of every consumer
(``MlflowClient.log_inputs(models=...)``: the fluent ``log_inputs(models=)`` is Databricks-only), and
registered per role in the Model Registry (``herd.platform.registry``). A reused step whose producing run is
missing from this MLflow (a new ``--tracking-uri``) is re-recorded here, tagged with where it ran.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from herd.platform import mlflow_views as views
from herd.platform.lineage_read import (
    LineageReader,
    relocate_artifacts,
    render_text,
    search_all,
    steps_in,
    to_mermaid,
)
from herd.platform.registry import register_model
from herd.platform.roles import model_name

_log = logging.getLogger("herd.lineage")
DIGEST_LEN = 32  # MLflow dataset digests hold at most 36 characters


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> MLflow params (``a.b.c`` keys, values as strings, lists as JSON)."""
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = json.dumps(v) if isinstance(v, list | dict) else str(v)
    return out


def _client(tracking_uri: str):
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from herd.platform.redact import scrubbing_client

    return scrubbing_client(tracking_uri)  # every tag, param and text written is scrubbed of known secrets


def experiment_id(client, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


class LineageRecorder:
    """Writes flow runs, step runs, metrics and artifact links to MLflow. Use from the driver only."""

    def __init__(self, tracking_uri: str, experiment: str = "herd", artifact_location: str | None = None,
                 ui: str | None = None):
        self.tracking_uri = tracking_uri
        self.client = _client(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, artifact_location)
        self.ui = views.ui_base(tracking_uri, ui or views.UI_DEFAULT)

    # ---------------------------------------------------------------------------------------------- links
    def run_url(self, run_id: str) -> str:
        """The run's page (for a sqlite store: where `herd ui` shows it)."""
        return views.run_url(self.ui, self.experiment_id, run_id)

    def _page(self, model_id: str) -> str:
        """A model page link inside MLflow's own pages: root-relative, so it works on any host and port."""
        return views.model_url("", self.experiment_id, model_id)

    def experiment_url(self) -> str:
        return views.experiment_url(self.ui, self.experiment_id)

    def model_url(self, model_id: str) -> str:
        return views.model_url(self.ui, self.experiment_id, model_id)

    def where_to_look(self, run_id: str, source: str = "") -> str:
        """One line for the end of a command: the runs view, and when no MLflow serves this store at that address
        (an embedded sqlite store and no `herd ui` running) the command that will serve it there."""
        url = self.experiment_url()
        if self.tracking_uri.startswith(("http://", "https://")) or views.serves(self.ui, run_id):
            return f"MLflow: {url}"
        return f"MLflow: {url} (run `{views.ui_command(source)}` to serve it)"

    # ---------------------------------------------------------------------------------------------- runs
    def start_flow_run(self, flow: str, tags: dict[str, str], recipe: Any = None,
                       ray: dict[str, str] | None = None) -> str:
        """A flow run: Source = the command line, the resolved recipe (secrets redacted) as ``recipe.yaml``,
        the Ray job id and dashboard when Ray runs. Its summary comes with ``finish_flow_run``."""
        tags = {k: (views.redact_source(v) if k == "herd.recipe" else v) for k, v in tags.items()}
        run = self.client.create_run(self.experiment_id, run_name=flow, tags={
            "herd.kind": "flow", "herd.flow": flow, **_source_tags(), **(ray or {}), **tags})
        run_id = run.info.run_id
        if recipe is not None:
            self.client.log_text(run_id, views.recipe_yaml(recipe), "recipe.yaml")
            self.client.log_batch(run_id, params=_params({"recipe": views.recipe_name(recipe.source)}))
        return run_id

    def start_step_run(self, flow_run_id: str, step: str, config: dict[str, Any], cache_key: str,
                       inputs: dict[str, str], description: str = "", ray: dict[str, str] | None = None) -> str:
        tags = {"mlflow.parentRunId": flow_run_id, "herd.kind": "step", "herd.step": step,
                "herd.cache_key": cache_key, "herd.inputs": json.dumps(inputs, sort_keys=True),
                **_source_tags(), **(ray or {})}
        if description:
            tags["mlflow.note.content"] = description
        run = self.client.create_run(self.experiment_id, run_name=step, tags=tags)
        run_id = run.info.run_id
        items = _params(views.redact(flatten(config)))
        for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
            self.client.log_batch(run_id, params=items[i:i + 100])
        return run_id

    def finish_flow_run(self, run_id: str, flow: str, source: str, ran: list[tuple[str, str, float]],
                        reused: list[tuple[str, str]], configs: dict[str, dict[str, Any]]) -> None:
        """The flow run's summary: params (the union of its steps' config sections), headline metrics of the
        steps that ran, and a description listing what ran and what was reused, with links."""
        merged: dict[str, Any] = {}
        for cfg in configs.values():
            merged.update(cfg)
        have = set(self.client.get_run(run_id).data.params)
        items = [p for p in _params(views.redact(flatten(merged))) if p.key not in have]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])
        metrics: dict[str, float] = {}
        for step, step_run, _ in ran:
            metrics.update(views.headline_metrics(step, self.client.get_run(step_run).data.metrics))
        metrics |= {"steps_ran": float(len(ran)), "steps_reused": float(len(reused))}
        self.log_metrics(run_id, metrics, 0, time.time())
        self.client.set_tag(run_id, "mlflow.note.content", views.flow_description(
            flow, source, ran, reused, lambda r: views.run_url("", self.experiment_id, r)))
        self.client.set_tag(run_id, "herd.reused", json.dumps(dict(reused), sort_keys=True))

    # -------------------------------------------------------------------------------------------- inputs
    def log_inputs(self, run_id: str, inputs: dict[str, Any], model_ids: dict[str, str]) -> None:
        """Artifacts consumed by a step: models as LoggedModel inputs, datasets as dataset inputs (with profile
        and schema); a tokenizer or another non-dataset artifact is a ``herd.input.<name>`` tag, not a dataset."""
        from mlflow.entities import LoggedModelInput

        datasets, models, tags = [], [], {}
        for name, art in sorted(inputs.items()):
            if art.kind == "model" and art.digest in model_ids:
                models.append(LoggedModelInput(model_ids[art.digest]))
            elif art.kind == "dataset":
                datasets.append(self._dataset(views.output_name(art, name), art.uri, art.digest, "input", art))
            if art.kind != "dataset":
                tags[f"herd.input.{name}"] = f"{views.output_name(art, name)} {art.digest[:12]} {art.uri}"
        if datasets or models:
            self.client.log_inputs(run_id, datasets=datasets or None, models=models or None)
        self.set_tags(run_id, tags)

    def log_sources(self, run_id: str, sources: list[dict[str, str]]) -> None:
        if sources:
            self.client.log_inputs(run_id, datasets=[self._dataset(s["name"], s["uri"], s["digest"], "source")
                                                     for s in sources])
            self.client.set_tag(run_id, "herd.sources", json.dumps(sources, sort_keys=True))

    @staticmethod
    def _dataset(name: str, uri: str, digest: str, context: str, art: Any = None):
        from mlflow.entities import DatasetInput, InputTag

        local = None
        if art is not None and art.store.local:  # the schema is a parquet footer: read it only where it is local
            local = Path(art.store.path(art.store.object_key(art.digest)))
        ds = views.dataset_entity(name, uri, digest, art.manifest if art is not None else None, local)
        return DatasetInput(ds, tags=[InputTag("mlflow.data.context", context), InputTag("herd.digest", digest)])

    # ------------------------------------------------------------------------------------------- outputs
    def record_outputs(self, run_id: str, step: str, outputs: dict[str, Any], roles: dict[str, str] | None = None,
                       recipe_source: str = "", inputs: dict[str, Any] | None = None) -> dict[str, str]:
        """Make a step's outputs visible from its run and clickable: datasets as dataset entries with context
        ``output`` (profile, schema), one ``herd.output.<name>`` tag each, and for each model a LoggedModel named
        by its role (``<recipe>-<role>``) with params, final metrics tied to its datasets, its files (or a pointer
        into the store), its parent model and, for a role, a Model Registry version."""
        from mlflow.entities import LoggedModelOutput

        roles = roles or {}
        inputs = inputs or {}
        self.client.set_tag(run_id, "herd.outputs",
                            json.dumps({n: a.digest for n, a in outputs.items()}, sort_keys=True))
        self.set_tags(run_id, {f"herd.output.{n}": f"{a.digest} {a.uri}" for n, a in outputs.items()})
        data_out = [self._dataset(f"{step}.{n}", a.uri, a.digest, "output", a)
                    for n, a in sorted(outputs.items()) if a.kind == "dataset"]
        if data_out:
            self.client.log_inputs(run_id, datasets=data_out)  # MLflow has no dataset outputs: context "output"
        model_ids: dict[str, str] = {}
        labels: dict[str, tuple[str, str | None]] = {}
        parents: dict[str, list] = {}
        try:  # all or nothing: a LoggedModel whose run did not finish recording is deleted, never left behind
            for name, art in sorted(outputs.items()):
                if art.kind != "model":
                    continue
                role = roles.get(name)
                label = model_name(views.recipe_name(recipe_source), role) if role \
                    else f"{step}-{name}".replace(".", "-")
                m = self.client.create_logged_model(
                    self.experiment_id, name=label, source_run_id=run_id,
                    tags={"herd.digest": art.digest, "herd.uri": art.uri, "herd.format": art.manifest.format,
                          "herd.step": step, "herd.output": name, **({"herd.role": role} if role else {})})
                model_ids[name], labels[name] = m.model_id, (label, role)
                try:  # the page is a view: a failure there is logged, never fails the step
                    parents[name] = self._model_page(m.model_id, label, run_id, art, inputs)
                except Exception as e:  # noqa: BLE001
                    _log.warning("could not fill the MLflow page of model %s (%s): %s", label, m.model_id, e)
                self.client.finalize_logged_model(m.model_id, "READY")
            if model_ids:
                self.client.log_outputs(run_id, [LoggedModelOutput(mid, 0) for mid in model_ids.values()])
            # evaluation results name the model they measured (meta.model_metrics): attach them to its LoggedModel
            from herd.platform.model_metrics import attach_output_metrics

            attach_output_metrics(self.client, self.experiment_id, run_id, outputs)
        except BaseException:
            self.discard_models(list(model_ids.values()))
            raise
        for name, (label, role) in labels.items():  # last: links and a registry version only for a recorded model
            try:
                self._link_children(model_ids[name], label, parents.get(name, []))
            except Exception as e:  # noqa: BLE001 -- a view, like the page
                _log.warning("could not list model %s on its parent's page: %s", label, e)
            if role:
                self._register(model_ids[name], label, role, outputs[name].digest, run_id)
        return model_ids

    def _register(self, model_id: str, label: str, role: str, digest: str, run_id: str) -> None:
        try:  # the registry is a view: a failure there is logged, never fails the step
            version = register_model(self.client, model_id, label, digest, run_id,
                                     description=f"herd's {role} models of recipe {label.rsplit('-', 1)[0]}")
            self.client.set_logged_model_tags(model_id, {"herd.registered": f"{label} v{version}"})
        except Exception as e:  # noqa: BLE001
            _log.warning("could not register model %s in the MLflow Model Registry: %s", label, e)

    def discard_models(self, model_ids: list[str]) -> None:
        """Delete LoggedModels whose recording did not finish (their step failed while its outputs were being
        recorded): MLflow would otherwise list a model that no finished run made."""
        for mid in model_ids:
            try:
                self.client.delete_logged_model(mid)
            except Exception as e:  # noqa: BLE001 -- best effort while another error is on its way up
                _log.warning("could not delete the unfinished LoggedModel %s: %s", mid, e)

    def discard_dead_attempts(self, step: str, run_id: str) -> list[str]:
        """Delete the LoggedModels that earlier attempts of ``step`` left behind without finishing (a driver killed
        while it recorded them: their run never reached FINISHED). Call it holding the step's lease: then no
        other attempt of ``step`` is alive, and every unfinished one is dead. Returns the deleted ids."""
        dead = []
        for m in self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                  filter_string=f"tags.`herd.step` = '{step}'"):
            if m.source_run_id == run_id or not m.source_run_id:
                continue
            if self.client.get_run(m.source_run_id).info.status != "FINISHED":
                dead.append(m.model_id)
        self.discard_models(dead)
        return dead

    def _model_page(self, model_id: str, label: str, run_id: str, art: Any, inputs: dict[str, Any]) -> list:
        """Params, metrics (tied to the datasets they were measured on), the parent, files; returns the parents."""
        from mlflow.entities import Metric

        run = self.client.get_run(run_id)
        params = {k: v for k, v in run.data.params.items()}
        params |= {"herd.step": run.data.tags.get("herd.step", ""), "herd.digest": art.digest}
        if art.store.local or art.manifest.bytes <= MODEL_FILES_MAX_BYTES:  # config.json: the shape and sizes
            params |= views.model_architecture(art.local_path())
        datasets = {n: a for n, a in inputs.items() if a.kind == "dataset"}
        held = next((a for n, a in sorted(datasets.items()) if "val" in n), None)
        train = next((a for n, a in sorted(datasets.items()) if "val" not in n), None)
        parents = []
        for mi in run.inputs.model_inputs:
            pm = self.client.get_logged_model(mi.model_id)
            if pm.source_run_id != run_id:  # a metric logged with model_id makes a self-link (notes §5)
                parents.append(pm)
        if parents:
            params["parent_model"] = ", ".join(f"{p.name} ({p.model_id})" for p in parents)
        self.client.log_model_params(model_id, {k[:250]: str(v)[:6000] for k, v in params.items()})
        metrics = []
        for k in sorted(run.data.metrics):
            if k.startswith(("moe/", "moe.")) or k in ("step", "tokens"):
                continue
            # The model's metric is the run's last point itself (same step, time and value): MLflow also writes a
            # model metric into the run's history, and this way it adds no point (a step-0 point holding the
            # final value used to start every training chart).
            last = max(self.client.get_metric_history(run_id, k), key=lambda m: (m.step, m.timestamp))
            ds = held if k.startswith("eval/") else train
            metrics.append(Metric(k, last.value, last.timestamp, last.step, model_id=model_id,
                                  dataset_name=views.output_name(ds, "data") if ds is not None else None,
                                  dataset_digest=ds.digest[:DIGEST_LEN] if ds is not None else None))
        for i in range(0, len(metrics), 500):
            self.client.log_batch(run_id, metrics=metrics[i:i + 500])
        note = [(f"**{label}**: made by step `{run.data.tags.get('herd.step')}` "
                 f"([run]({views.run_url('', self.experiment_id, run_id)}))."), "",
                f"Files in herd's store: `{art.uri}` (digest `{art.digest}`)."]
        if parents:
            note.append("Parent: " + ", ".join(f"[{p.name}]({self._page(p.model_id)})" for p in parents))
            self.client.set_logged_model_tags(model_id, {"herd.parent": ",".join(p.model_id for p in parents)})
        self.client.set_logged_model_tags(model_id, {"mlflow.note.content": "\n\n".join(note)})
        self._log_model_files(model_id, art)
        return parents

    def _link_children(self, model_id: str, label: str, parents: list) -> None:
        """The parents' pages list what was made from them (once the child is fully recorded)."""
        for p in parents:
            self.client.set_logged_model_tags(p.model_id, {f"herd.child.{label}": model_id})
            self._append_note(p, f"Made from it: [{label}]({self._page(model_id)})")

    def _append_note(self, model, line: str) -> None:
        old = self.client.get_logged_model(model.model_id).tags.get("mlflow.note.content", "")
        if line not in old:
            self.client.set_logged_model_tags(model.model_id, {"mlflow.note.content": f"{old}\n\n{line}".strip()})

    def _log_model_files(self, model_id: str, art: Any) -> None:
        """The model's files on its page when they are small (the tiny recipes); else only a pointer file."""
        import tempfile

        pointer = (f"# herd model {art.digest}\n\nThe files of this model live in herd's artifact store:\n\n"
                   f"    {art.uri}\n\nformat: {art.manifest.format}, {art.manifest.files} files, "
                   f"{art.manifest.bytes} bytes. Serve it with `herd serve`, or trace it with `herd lineage "
                   f"{art.digest[:12]}`.\n")
        with tempfile.TemporaryDirectory() as tmp:
            Path(tmp, "HERD_STORE.md").write_text(pointer)
            self.client.log_model_artifacts(model_id, tmp)
        if art.manifest.bytes <= MODEL_FILES_MAX_BYTES:
            self.client.log_model_artifacts(model_id, str(art.local_path()))

    def model_id_for(self, digest: str) -> str | None:
        """The LoggedModel that records artifact ``digest`` in this experiment, if any."""
        found = self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                 filter_string=f"tags.`herd.digest` = '{digest}'")
        return found[0].model_id if found else None

    # -------------------------------------------------------------------------------------------- reuse
    def producer_run(self, outputs: dict[str, str]) -> str | None:
        """A finished run in this experiment that recorded exactly these outputs (None: lineage has a gap)."""
        if not outputs:
            return None
        digest = next(iter(sorted(outputs.values())))
        for r in search_all(self.client, [self.experiment_id], f"tags.`herd.outputs` LIKE '%{digest}%'"):
            if r.info.status == "FINISHED" and json.loads(r.data.tags["herd.outputs"]) == outputs:
                return r.info.run_id
        return None

    def record_reused(self, flow_run_id: str, step: str, config: dict[str, Any], cache_key: str,
                      inputs: dict[str, Any], outputs: dict[str, Any], roles: dict[str, str], recipe_source: str,
                      origin: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Re-record a cached step in this MLflow (its producing run lives in another one, or is gone): a
        FINISHED step run tagged with where it really ran, with its inputs and outputs, so lineage walks
        through it instead of stopping."""
        run_id = self.start_step_run(flow_run_id, step, config, cache_key, {n: a.digest for n, a in inputs.items()},
                                     description=f"Reused from the cache: `{step}` ran in run "
                                                 f"{origin.get('run_id')} of {origin.get('tracking_uri')}.")
        self.set_tags(run_id, {"herd.reused_from_run": origin.get("run_id") or "",
                               "herd.reused_from_tracking_uri": origin.get("tracking_uri") or ""})
        model_ids = {a.digest: mid for a in inputs.values() if a.kind == "model"
                     for mid in [self.model_id_for(a.digest)] if mid}
        self.log_inputs(run_id, inputs, model_ids)
        made = self.record_outputs(run_id, step, outputs, roles, recipe_source, inputs)
        self.end_run(run_id, "FINISHED")
        return run_id, made

    # ------------------------------------------------------------------------------------------- metrics
    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None, ts: float) -> None:
        from mlflow.entities import Metric

        stamp = int(ts * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, step or 0) for k, v in metrics.items()])

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        self.client.log_batch(run_id, params=_params(views.redact(params)))

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


MODEL_FILES_MAX_BYTES = 256 * 1024**2  # bigger models keep only a pointer on their MLflow page


def _params(params: dict[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(k[:250], str(v)[:6000]) for k, v in params.items()]


def _source_tags() -> dict[str, str]:
    """Source on every run: the command that made it (``herd run --recipe test``), as MLflow shows it."""
    import getpass

    cmd = views.command_name()
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "herd"
    return {"mlflow.source.name": cmd[:500], "mlflow.source.type": "LOCAL", "mlflow.user": user}


__all__ = ["LineageReader", "LineageRecorder", "flatten", "relocate_artifacts", "render_text", "steps_in",
           "to_mermaid"]
