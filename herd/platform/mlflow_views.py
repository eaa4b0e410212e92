"""What herd puts on MLflow's pages beyond raw lineage: links that open the right view, dataset profiles and
schemas, model-page content, flow-run summaries, the resolved (redacted) recipe. Pure helpers; the writes happen
in ``herd.platform.lineage.LineageRecorder`` (driver only).

    experiment_url("http://127.0.0.1:5000", "1")   # .../#/experiments/1/runs?workflowType=machine_learning
    dataset_entity("data.pack.pretrain", uri, digest, manifest)   # MLflow Dataset with profile + schema
    recipe_yaml(recipe)                              # the resolved recipe, secrets as ***

MLflow 3.17 opens a bare experiment URL on its GenAI overview (traces, token cost); ``workflowType=
machine_learning`` selects the "Model training" runs view (checked in Chromium by tests/ui). A sqlite store has no
server of its own: its links use ``herd ui``'s port, and while nothing serves the store there (``serves``) herd
prints the ``herd ui`` command that will (``ui_command``) beside the link.
"""

from __future__ import annotations

import json
import re
from typing import Any

# `herd ui` serves a sqlite store here by default: links printed for a sqlite store point at it, and when nothing
# serves it there, herd prints the `herd ui` command (ui_command) beside the link.
UI_PORT = 5000
UI_DEFAULT = f"http://127.0.0.1:{UI_PORT}"
UI_OVERRIDES = ("runtime.home=", "runtime.tracking_uri=", "runtime.experiment=")  # what `herd ui` reads
REDACTED = "***"
_SECRET = re.compile(r"(secret|password|passwd|token|credential|api_key|apikey|access_key|private_key)", re.IGNORECASE)
_SECRET_EXACT = {"key", "secret", "token", "password"}


def ui_base(tracking_uri: str, ui: str = UI_DEFAULT) -> str:
    """The web address of the MLflow UI for ``tracking_uri`` (an http server is its own UI)."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else ui.rstrip("/")


def ui_command(source: str = "") -> str:
    """The ``herd ui`` command that serves the runs of a command whose recipe was ``source`` (``test --set
    runtime.home=/x``): the same recipe and the runtime overrides ``herd ui`` reads, nothing else."""
    ref, *sets = source.split(" --set ")
    ref = ref.strip()
    args = ["--recipe", ref] if ref and ref not in ("tiny", "defaults") else []
    for o in sets:
        if o.strip().startswith(UI_OVERRIDES):
            args += ["--set", o.strip()]
    return " ".join(["herd ui", *args])


def serves(base: str, run_id: str, timeout: float = 2.0) -> bool:
    """An MLflow answers at ``base`` and shows run ``run_id``: the links herd prints for that run's store open
    there. (Any MLflow answers /health; only one serving the same store knows the run.)"""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{base.rstrip('/')}/api/2.0/mlflow/runs/get?run_id={run_id}",
                                    timeout=timeout) as r:
            return r.status == 200
    except (OSError, ValueError, urllib.error.URLError):  # nothing listens, another store (404), a bad address
        return False


def experiment_url(base: str, experiment_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def model_url(base: str, experiment_id: str, model_id: str) -> str:
    return f"{base}/#/experiments/{experiment_id}/models/{model_id}"


def registry_url(base: str, name: str | None = None) -> str:
    return f"{base}/#/models/{name}" if name else f"{base}/#/models"


# ------------------------------------------------------------------------------------------------ secrets
def redact(obj: Any) -> Any:
    """``obj`` with secrets as ``***`` (herd.platform.redact, the one redaction rule)."""
    from herd.platform.redact import redact_config

    return redact_config(obj)


def redact_source(source: str) -> str:
    """A recipe source or command line (``tiny --set a.b=c -s x=y``) with the values of secret overrides hidden."""
    from herd.platform.redact import redact_override, scrub

    words = source.split(" ")
    for i, w in enumerate(words):
        if i and words[i - 1] in ("--set", "-s"):
            words[i] = redact_override(w)
        elif w.startswith("--set="):
            words[i] = "--set=" + redact_override(w[len("--set="):])
    return scrub(" ".join(words))


def command_name(argv: list[str] | None = None) -> str:
    """The herd command this process runs, as a user typed it (``herd run --recipe tiny``), secret ``--set``
    values hidden: MLflow's Source of every run and the Ray job's name on the dashboard."""
    import os
    import sys

    argv = list(sys.argv if argv is None else argv)
    head = os.path.basename(argv[0]) if argv else "herd"
    if head in ("__main__.py", ""):  # python -m herd
        head = "herd"
    return redact_source(" ".join([head, *argv[1:]]))[:500]


def recipe_name(source: str) -> str:
    """``tiny`` from ``tiny --set ...``; a recipe file's stem (``my`` from ``/x/my.yaml``)."""
    ref = source.split(" --set ", 1)[0].strip() or "recipe"
    stem = ref.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"\.ya?ml$", "", stem) or "recipe"


def recipe_yaml(recipe: Any) -> str:
    """The resolved recipe as YAML (every default filled in), secrets redacted, source in a comment."""
    import yaml

    data = redact(recipe.model_dump(mode="json"))
    head = f"# resolved recipe: {redact_source(getattr(recipe, 'source', ''))}\n"
    return head + yaml.safe_dump(data, sort_keys=False, width=110)


# ------------------------------------------------------------------------------------------------ datasets
def _parquet_schema(path: Any) -> list[dict[str, str]] | None:
    """Column names and types of the first parquet file under a local directory (footer only)."""
    import pyarrow.parquet as pq

    files = sorted(path.rglob("*.parquet")) if path is not None else []
    if not files:
        return None
    schema = pq.read_schema(files[0])
    return [{"name": f.name, "type": _mlflow_type(str(f.type))} for f in schema]


def _mlflow_type(arrow: str) -> str:
    # The UI renders any string: nested types keep arrow's spelling minus the child field name (list<int32>).
    arrow = re.sub(r"<(?:item|element): ", "<", arrow)
    return {"int64": "long", "int32": "integer", "double": "double", "float": "float", "string": "string",
            "large_string": "string", "bool": "boolean", "binary": "binary"}.get(arrow, arrow)


def dataset_profile(manifest: Any) -> dict[str, Any]:
    """What herd knows about an artifact's size: rows, tokens (packed shards), files, bytes, format."""
    meta = dict(getattr(manifest, "meta", {}) or {})
    prof: dict[str, Any] = {"kind": manifest.kind, "format": manifest.format, "files": manifest.files,
                            "bytes": manifest.bytes}
    for k in ("rows", "tokens", "target_tokens", "seq_len", "documents", "chats", "images", "chars",
              "rows_read", "vocab_size"):
        if k in meta:
            prof[k] = meta[k]
    if isinstance(prof.get("rows"), dict):  # several tables in one artifact: rows per table, and the total
        prof["rows_by_table"] = prof["rows"]
        prof["rows"] = sum(v for v in prof["rows"].values() if isinstance(v, int | float))
    return prof


def dataset_entity(name: str, uri: str, digest: str, manifest: Any = None, local_path: Any = None):
    """An MLflow ``Dataset`` (digest + source URI) with herd's profile and, for parquet, the column schema."""
    import warnings

    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.entities import Dataset

    with warnings.catch_warnings():  # "source can be interpreted in multiple ways" for local paths
        warnings.simplefilter("ignore")
        src = resolve_dataset_source(uri)
    schema = profile = None
    if manifest is not None:
        profile = json.dumps(dataset_profile(manifest))
        cols = _parquet_schema(local_path) if manifest.format == "parquet" and local_path is not None else None
        if cols:
            schema = json.dumps({"mlflow_colspec": cols})
    from herd.platform.lineage import DIGEST_LEN

    return Dataset(name=name, digest=digest[:DIGEST_LEN], source_type=src._get_source_type(),
                   source=src.to_json(), schema=schema, profile=profile)


def output_name(art: Any, fallback: str) -> str:
    """The pipeline name of an artifact (``data.pack.pretrain``): the name the CLI and ``herd lineage`` use."""
    m = art.manifest
    out = (m.meta or {}).get("output")
    return f"{m.producer_step}.{out}" if m.producer_step and out else fallback


# ------------------------------------------------------------------------------------------------ models
ARCH_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "intermediate_size_mlp", "num_local_experts", "num_experts_per_tok", "interleave_moe_layer_step",
             "vocab_size", "max_position_embeddings")


def model_architecture(model_dir: Any) -> dict[str, Any]:
    """Architecture params of a model directory in transformers' layout (config.json): the shape, total and
    active parameters per token. Empty when the directory holds no Llama 4 config herd can read."""
    from pathlib import Path

    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        return {}
    from herd.model.config import ModelConfig

    raw = json.loads(cfg_path.read_text())
    if not str(raw.get("model_type", "")).startswith("llama4"):  # another family: herd cannot count it
        return {}
    try:
        cfg = ModelConfig.from_hf_dict(raw)
    except (ValueError, TypeError, KeyError):  # not a herd-shaped Llama 4 (e.g. an imported checkpoint)
        return {}
    dumped = cfg.model_dump(mode="json")
    out: dict[str, Any] = {f"arch.{k}": dumped[k] for k in ARCH_KEYS if k in dumped}
    out["total_params"] = cfg.num_params()
    out["active_params"] = cfg.num_active_params()
    return out


# ------------------------------------------------------------------------------------------------ summaries
HEADLINE = ("loss", "ce", "eval/loss", "kl", "teacher_ce", "alpha", "rollout/reward", "tokens_per_s", "mfu")


def headline_metrics(step: str, metrics: dict[str, float]) -> dict[str, float]:
    """The metrics of a step run worth repeating on its flow run (``<step local name>/<metric>``): every
    data-step count, the trainers' losses, RL's reward, throughput and MFU; never the per-expert MoE
    charts."""
    local = step.split(".", 1)[-1]
    keep = {k: v for k, v in metrics.items()
            if k in HEADLINE or (step.startswith("data.") and "/" not in k)}
    return {f"{local}/{k}": v for k, v in keep.items()}


def flow_description(flow: str, source: str, ran: list[tuple[str, str, float]], reused: list[tuple[str, str]],
                     link: Any) -> str:
    """Markdown for the flow run's Description: what ran and what was reused, with links to their runs."""
    lines = [f"**herd flow `{flow}`** (recipe `{redact_source(source)}`)", ""]
    for step, run_id, secs in ran:
        lines.append(f"- ran **{step}** in {secs:.1f}s: [run]({link(run_id)})")
    for step, run_id in reused:
        lines.append(f"- reused **{step}** (cached): [run that made it]({link(run_id)})" if run_id
                     else f"- reused **{step}** (cached)")
    lines += ["", "The resolved recipe is the artifact `recipe.yaml`."]
    return "\n".join(lines)


__all__ = ["ARCH_KEYS", "UI_DEFAULT", "UI_PORT", "command_name", "dataset_entity", "dataset_profile", "experiment_url",
           "flow_description", "headline_metrics", "model_architecture", "model_url", "output_name", "recipe_name",
           "recipe_yaml", "redact", "redact_source", "registry_url", "run_url", "serves", "ui_base", "ui_command"]
