"""Lineage in MLflow, the read side: ``LineageReader`` walks up (what made X, from what, down to the raw sources)
and down (what was made from X); ``render_text`` / ``to_mermaid`` draw the trees (plain dicts for ``--format
json``). Also ``relocate_artifacts`` (a moved HERD_HOME keeps its plots) and the paged run search both sides use.

    reader = LineageReader(tracking_uri)          # experiment "herd"
    print(render_text(reader.up("m-...")))        # ids: artifact digest (or >= 8-char prefix), m-... id, step run id

Import these from ``herd.platform.lineage`` (which re-exports them). Works the same on sqlite and a server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from herd.platform.errors import LineageError

PAGE = 1000  # MLflow's largest page of search_runs


def _client(tracking_uri: str):
    import os

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri)


def search_all(client, experiment_ids: list[str], filter_string: str) -> list:
    """Every run matching ``filter_string``: MLflow pages at 1000 runs; follow ``page_token`` to the end."""
    out: list = []
    token = None
    while True:
        page = client.search_runs(experiment_ids, filter_string, max_results=PAGE, page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def relocate_artifacts(tracking_uri: str, home: Path) -> list[str]:
    """Point a sqlite store's local artifact paths at ``<home>/mlartifacts`` after HERD_HOME moved.

    MLflow stores absolute artifact paths (experiments, runs, LoggedModels, model versions); a moved HERD_HOME
    would lose every plot and model file on the UI. Only roots that no longer exist are rewritten, so two homes
    side by side never steal each other's artifacts. Returns the old roots it rewrote."""
    import sqlite3

    if not tracking_uri.startswith("sqlite:///"):
        return []
    db = Path(tracking_uri[len("sqlite:///"):])
    new = str(home / "mlartifacts")
    if not db.exists():
        return []
    con = sqlite3.connect(db)
    try:
        try:
            locs = [r[0] for r in con.execute("SELECT artifact_location FROM experiments")]
        except sqlite3.OperationalError:  # not an MLflow database (yet)
            return []
        olds = sorted({loc.split("/mlartifacts", 1)[0] + "/mlartifacts" for loc in locs
                       if loc and "/mlartifacts" in loc and "://" not in loc and not loc.startswith(new)})
        olds = [o for o in olds if not Path(o).exists()]
        for old in olds:
            for table, col in (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                               ("logged_models", "artifact_location"), ("model_versions", "storage_location")):
                con.execute(f"UPDATE {table} SET {col} = ? || substr({col}, ?) WHERE substr({col}, 1, ?) = ?",
                            (new, len(old) + 1, len(old), old))
        con.commit()
        return olds
    finally:
        con.close()


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
        return search_all(self.client, [self.experiment_id], filter_string)

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


__all__ = ["PAGE", "LineageReader", "relocate_artifacts", "render_text", "search_all", "steps_in", "to_mermaid"]
