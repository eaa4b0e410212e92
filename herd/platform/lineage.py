"""Lineage in MLflow: the write side (driver only, ``MlflowClient``) and the read side (walk up / down).

Write side, ``LineageRecorder``: every flow run is an MLflow run; every step a nested run (tag
``mlflow.parentRunId``) with params = the flattened config section, its metrics, and tags ``herd.step``,
``herd.cache_key``, ``herd.inputs`` / ``herd.outputs`` (JSON name -> artifact digest). Data artifacts a step
consumes are MLflow dataset inputs (digest + source URI); raw sources a step read are dataset inputs with
context ``source``. Models are MLflow 3 LoggedModels whose source run is the step that made them, linked as
outputs of that run (``log_outputs``: creating a model does not link it) and as inputs of every consumer
(``MlflowClient.log_inputs(models=...)``: the fluent ``log_inputs(models=)`` is Databricks-only).

Read side, ``LineageReader``: ``up(id)`` answers what made artifact/model X and from what, down to the raw
sources; ``down(id)`` what was made from X. Ids: an artifact digest (or a unique prefix of >= 8 chars), a
LoggedModel id (``m-...``), or the run id of a step with one output. Works the same on sqlite and an
``mlflow server``. Rendering: ``render_text``, ``to_mermaid``; the trees are plain dicts for ``--format json``.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from herd.platform.errors import LineageError

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

    def __init__(self, tracking_uri: str, experiment: str = "herd", artifact_location: str | None = None):
        self.tracking_uri = tracking_uri
        self.client = _client(tracking_uri)
        self.experiment_id = experiment_id(self.client, experiment, artifact_location)

    def run_url(self, run_id: str) -> str:
        if self.tracking_uri.startswith("http"):
            return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self.experiment_id}/runs/{run_id}"
        return f"mlflow run {run_id}"

    def start_flow_run(self, flow: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=flow,
                                     tags={"herd.kind": "flow", "herd.flow": flow, **tags})
        return run.info.run_id

    def start_step_run(self, flow_run_id: str, step: str, config: dict[str, Any], cache_key: str,
                       inputs: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=step, tags={
            "mlflow.parentRunId": flow_run_id, "herd.kind": "step", "herd.step": step,
            "herd.cache_key": cache_key, "herd.inputs": json.dumps(inputs, sort_keys=True)})
        run_id = run.info.run_id
        params = flatten(config)
        if params:
            from mlflow.entities import Param

            items = [Param(k[:250], v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # log_batch takes at most 100 params per call
                self.client.log_batch(run_id, params=items[i:i + 100])
        return run_id

    def log_inputs(self, run_id: str, inputs: dict[str, Any], model_ids: dict[str, str]) -> None:
        """Artifacts consumed by a step: models as LoggedModel inputs, everything else as dataset inputs."""
        from mlflow.entities import LoggedModelInput

        datasets, models = [], []
        for name, art in sorted(inputs.items()):
            if art.kind == "model" and art.digest in model_ids:
                models.append(LoggedModelInput(model_ids[art.digest]))
            datasets.append(self._dataset(name, art.uri, art.digest, "input"))
        self.client.log_inputs(run_id, datasets=datasets or None, models=models or None)

    def log_sources(self, run_id: str, sources: list[dict[str, str]]) -> None:
        if sources:
            self.client.log_inputs(run_id, datasets=[self._dataset(s["name"], s["uri"], s["digest"], "source")
                                                     for s in sources])
            self.client.set_tag(run_id, "herd.sources", json.dumps(sources, sort_keys=True))

    @staticmethod
    def _dataset(name: str, uri: str, digest: str, context: str):
        import warnings

        from mlflow.data.dataset_source_registry import resolve_dataset_source
        from mlflow.data.meta_dataset import MetaDataset
        from mlflow.entities import DatasetInput, InputTag

        with warnings.catch_warnings():  # "source can be interpreted in multiple ways" for local paths
            warnings.simplefilter("ignore")
            ds = MetaDataset(source=resolve_dataset_source(uri), name=name, digest=digest[:DIGEST_LEN])
        return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context),
                                                          InputTag("herd.digest", digest)])

    def record_outputs(self, run_id: str, step: str, outputs: dict[str, Any]) -> dict[str, str]:
        """Tag the run with its outputs; make a LoggedModel (source run = this step) for each model output."""
        from mlflow.entities import LoggedModelOutput

        self.client.set_tag(run_id, "herd.outputs",
                            json.dumps({n: a.digest for n, a in outputs.items()}, sort_keys=True))
        model_ids: dict[str, str] = {}
        for name, art in sorted(outputs.items()):
            if art.kind != "model":
                continue
            m = self.client.create_logged_model(
                self.experiment_id, name=f"{step}-{name}".replace(".", "-"), source_run_id=run_id,
                tags={"herd.digest": art.digest, "herd.uri": art.uri, "herd.format": art.manifest.format,
                      "herd.step": step, "herd.output": name})
            self.client.finalize_logged_model(m.model_id, "READY")
            model_ids[name] = m.model_id
        if model_ids:
            self.client.log_outputs(run_id, [LoggedModelOutput(mid, 0) for mid in model_ids.values()])
        return model_ids

    def model_id_for(self, digest: str) -> str | None:
        """The LoggedModel that records artifact ``digest`` in this experiment, if any."""
        found = self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                 filter_string=f"tags.`herd.digest` = '{digest}'")
        return found[0].model_id if found else None

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None, ts: float) -> None:
        from mlflow.entities import Metric

        stamp = int(ts * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, step or 0) for k, v in metrics.items()])

    def log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self.client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_tag(run_id, k, v)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status, end_time=int(time.time() * 1000))


# ------------------------------------------------------------------------------------------- read side
class LineageReader:
    """Answers lineage questions from MLflow alone (sqlite or server)."""

    def __init__(self, tracking_uri: str, experiment: str = "herd"):
        self.client = _client(tracking_uri)
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            raise LineageError(f"no MLflow experiment {experiment!r} at {tracking_uri}; run a flow first")
        self.experiment_id = exp.experiment_id

    def _runs(self, filter_string: str) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string, max_results=1000))

    def _producer(self, digest: str):
        runs = [r for r in self._runs(f"tags.`herd.outputs` LIKE '%{digest}%'")
                if r.info.status == "FINISHED" and digest in json.loads(r.data.tags["herd.outputs"]).values()]
        return min(runs, key=lambda r: r.info.start_time) if runs else None

    def resolve(self, ident: str) -> str:
        """An artifact digest for ``ident`` (a digest or prefix, a LoggedModel id, or a step run id)."""
        ident = ident.strip()
        if ident.startswith("m-"):
            from mlflow.exceptions import MlflowException

            try:
                return self.client.get_logged_model(ident).tags["herd.digest"]
            except (MlflowException, KeyError):
                raise LineageError(f"{ident} is not a herd model in this MLflow") from None
        if len(ident) == 32 and all(c in "0123456789abcdef" for c in ident):  # a step run id
            from mlflow.exceptions import MlflowException

            try:
                outs = json.loads(self.client.get_run(ident).data.tags.get("herd.outputs", "{}"))
            except MlflowException:
                outs = {}
            if len(outs) == 1:
                return next(iter(outs.values()))
            if outs:
                raise LineageError(f"run {ident} made {len(outs)} artifacts; pick one: "
                                   + ", ".join(f"{n}={d[:12]}" for n, d in sorted(outs.items())))
        runs = self._runs(f"tags.`herd.outputs` LIKE '%{ident}%'") if len(ident) >= 8 else []
        hits = {d for r in runs for d in json.loads(r.data.tags["herd.outputs"]).values() if d.startswith(ident)}
        if len(hits) == 1:
            return hits.pop()
        if len(hits) > 1:
            raise LineageError(f"id {ident!r} matches {len(hits)} artifacts; give more characters")
        raise LineageError(f"{ident!r} names no artifact, model or step output known to MLflow experiment "
                           f"{self.experiment_id}; ids are artifact digests (>= 8 chars), m-... model ids")

    def _artifact_node(self, digest: str, producer=None) -> dict[str, Any]:
        node: dict[str, Any] = {"type": "artifact", "digest": digest}
        producer = producer or self._producer(digest)
        if producer is not None:
            outs = json.loads(producer.data.tags["herd.outputs"])
            node["name"] = f"{producer.data.tags.get('herd.step')}.{next(n for n, d in outs.items() if d == digest)}"
            models = self.client.search_logged_models(experiment_ids=[self.experiment_id],
                                                      filter_string=f"tags.`herd.digest` = '{digest}'")
            if models:
                node["model_id"] = models[0].model_id
                node["uri"] = models[0].tags.get("herd.uri")
        return node

    def up(self, ident: str) -> dict[str, Any]:
        """What made X, from what, down to the raw sources."""
        return self._up(self.resolve(ident), set())

    def _up(self, digest: str, seen: set[str]) -> dict[str, Any]:
        producer = self._producer(digest)
        node = self._artifact_node(digest, producer)
        if producer is None or digest in seen:
            return node
        seen.add(digest)
        run = self.client.get_run(producer.info.run_id)  # get_run fills inputs; search_runs does not
        inputs = json.loads(run.data.tags.get("herd.inputs", "{}"))
        node["made_by"] = {
            "type": "run", "run_id": run.info.run_id, "step": run.data.tags.get("herd.step"),
            "parent_run_id": run.data.tags.get("mlflow.parentRunId"),
            "sources": json.loads(run.data.tags.get("herd.sources", "[]")),
            "model_inputs": sorted(mi.model_id for mi in run.inputs.model_inputs),
            "inputs": {name: self._up(d, seen) for name, d in sorted(inputs.items())},
        }
        return node

    def down(self, ident: str) -> dict[str, Any]:
        """What was made from X (transitively)."""
        return self._down(self.resolve(ident), set())

    def _down(self, digest: str, seen: set[str]) -> dict[str, Any]:
        node = self._artifact_node(digest)
        if digest in seen:
            return node
        seen.add(digest)
        consumers = [r for r in self._runs(f"tags.`herd.inputs` LIKE '%{digest}%'")
                     if r.info.status == "FINISHED" and digest in json.loads(r.data.tags["herd.inputs"]).values()]
        node["used_by"] = []
        for r in sorted(consumers, key=lambda r: r.info.start_time):
            outs = json.loads(r.data.tags.get("herd.outputs", "{}"))
            node["used_by"].append({"type": "run", "run_id": r.info.run_id, "step": r.data.tags.get("herd.step"),
                                    "outputs": {n: self._down(d, seen) for n, d in sorted(outs.items())}})
        return node


# ---------------------------------------------------------------------------------------------- render
def _label(node: dict[str, Any]) -> str:
    extra = f" {node['model_id']}" if node.get("model_id") else ""
    return f"{node.get('name', 'artifact')} [{node['digest'][:12]}]{extra}"


def render_text(tree: dict[str, Any], direction: str = "up") -> str:
    """An indented text tree (what ``herd lineage`` prints)."""
    lines: list[str] = []

    def art(node: dict[str, Any], depth: int) -> None:
        lines.append("  " * depth + _label(node))
        if direction == "up" and "made_by" in node:
            run = node["made_by"]
            lines.append("  " * (depth + 1) + f"<- made by step {run['step']} (run {run['run_id']})")
            for s in run["sources"]:
                lines.append("  " * (depth + 2) + f"<- source {s['uri']} [{s['digest'][:12]}]")
            for child in run["inputs"].values():
                art(child, depth + 2)
        for run in node.get("used_by", []):
            lines.append("  " * (depth + 1) + f"-> used by step {run['step']} (run {run['run_id']})")
            for child in run["outputs"].values():
                art(child, depth + 2)

    art(tree, 0)
    return "\n".join(lines)


def to_mermaid(tree: dict[str, Any], direction: str = "up") -> str:
    """A mermaid flowchart (``graph LR``): artifacts as boxes, steps as rounded nodes, sources as cylinders."""
    lines = ["graph LR"]
    seen: set[str] = set()

    def nid(prefix: str, key: str) -> str:
        return f"{prefix}_{key[:12].replace('-', '_')}"

    def add(line: str) -> None:
        if line not in seen:
            seen.add(line)
            lines.append("  " + line)

    def art(node: dict[str, Any]) -> str:
        a = nid("a", node["digest"])
        add(f'{a}["{_label(node)}"]')
        run = node.get("made_by")
        if run:
            r = nid("r", run["run_id"])
            add(f'{r}("{run["step"]}")')
            add(f"{r} --> {a}")
            for s in run["sources"]:
                src = nid("s", s["digest"])
                add(f'{src}[("{s["uri"]}")]')
                add(f"{src} --> {r}")
            for child in run["inputs"].values():
                add(f"{art(child)} --> {r}")
        for run in node.get("used_by", []):
            r = nid("r", run["run_id"])
            add(f'{r}("{run["step"]}")')
            add(f"{a} --> {r}")
            for child in run["outputs"].values():
                add(f"{r} --> {art(child)}")
        return a

    art(tree)
    return "\n".join(lines)


def steps_in(tree: dict[str, Any]) -> list[str]:
    """Every step name in a lineage tree (both directions), for tests and summaries."""
    out: list[str] = []

    def walk(node: dict[str, Any]) -> None:
        if "made_by" in node:
            out.append(node["made_by"]["step"])
            for c in node["made_by"]["inputs"].values():
                walk(c)
        for run in node.get("used_by", []):
            out.append(run["step"])
            for c in run["outputs"].values():
                walk(c)

    walk(tree)
    return out


__all__ = ["LineageReader", "LineageRecorder", "flatten", "render_text", "steps_in", "to_mermaid"]
