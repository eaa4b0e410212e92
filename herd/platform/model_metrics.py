"""Metrics that belong to a model: written onto its MLflow LoggedModel (driver side) and read back.

MLflow 3 keeps metrics on a LoggedModel when they are logged with ``model_id=`` (and the dataset they were
measured on), so the model's page in the MLflow UI lists its evaluation scores next to its lineage. Steps
never write MLflow: an evaluation step puts what it measured into its output's manifest
(``meta["model_metrics"]``, see ``manifest_entry``), and the driver attaches it when it records the step's
outputs (``attach_output_metrics``, called from ``LineageRecorder.record_outputs``). ``herd eval MODEL`` runs
in the driver and calls ``log_model_metrics`` directly.

    entry = manifest_entry(model_digest, metrics, dataset="herd-eval", dataset_digest=evalset_digest)
    ctx.output_dir("results", format="json", model_metrics=[entry])      # in the step
    attach_output_metrics(client, experiment_id, run_id, outputs)        # in the driver
    MlflowClient().get_logged_model(model_id).metrics                    # [Metric(key, value, dataset_name, ...)]
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

DATASET_DIGEST_LEN = 32  # MLflow stores at most 36 characters of a dataset digest


def manifest_entry(model_digest: str, metrics: Mapping[str, float], *, dataset: str,
                   dataset_digest: str | None = None) -> dict[str, Any]:
    """One manifest record of metrics measured on model ``model_digest`` with dataset ``dataset``."""
    return {"model": model_digest, "dataset": dataset, "dataset_digest": (dataset_digest or "")[:DATASET_DIGEST_LEN],
            "metrics": {k: float(v) for k, v in metrics.items()}}


def model_id_for(client: Any, experiment_id: str, digest: str) -> str | None:
    """The newest LoggedModel of artifact ``digest`` in the experiment (None when herd never logged it)."""
    found = client.search_logged_models(experiment_ids=[experiment_id],
                                        filter_string=f"tags.`herd.digest` = '{digest}'",
                                        order_by=[{"field_name": "creation_time", "ascending": False}])
    return found[0].model_id if found else None


def log_model_metrics(client: Any, run_id: str, model_id: str, metrics: Mapping[str, float], *,
                      dataset: str | None = None, dataset_digest: str | None = None, step: int = 0) -> None:
    """Log ``metrics`` in run ``run_id`` attached to LoggedModel ``model_id`` (and dataset), in batches."""
    from mlflow.entities import Metric

    stamp = int(time.time() * 1000)
    items = [Metric(k, float(v), stamp, step, model_id=model_id, dataset_name=dataset,
                    dataset_digest=(dataset_digest or None) and dataset_digest[:DATASET_DIGEST_LEN])
             for k, v in metrics.items()]
    for i in range(0, len(items), 1000):  # log_batch takes at most 1000 metrics per call
        client.log_batch(run_id, metrics=items[i:i + 1000])


def attach_output_metrics(client: Any, experiment_id: str, run_id: str, outputs: Mapping[str, Any]) -> int:
    """Attach every ``meta["model_metrics"]`` entry of a step's outputs to its model's LoggedModel.

    Returns how many metrics were attached. Entries whose model has no LoggedModel in this experiment (an
    artifact logged elsewhere) are skipped: their numbers stay in the step run and in the artifact."""
    n = 0
    for art in outputs.values():
        for entry in art.manifest.meta.get("model_metrics", []) or []:
            mid = model_id_for(client, experiment_id, entry["model"])
            if mid is None:
                continue
            log_model_metrics(client, run_id, mid, entry["metrics"], dataset=entry.get("dataset"),
                              dataset_digest=entry.get("dataset_digest"))
            n += len(entry["metrics"])
    return n


def ensure_logged_model(client: Any, experiment_id: str, *, digest: str, uri: str, fmt: str, role: str,
                        name: str, source_run_id: str | None = None) -> str:
    """The LoggedModel of artifact ``digest``, created (READY, tagged like the runner's) when there is none:
    how a model imported by ``herd eval DIR`` gets a page for its metrics."""
    mid = model_id_for(client, experiment_id, digest)
    if mid is not None:
        return mid
    m = client.create_logged_model(experiment_id, name=name, source_run_id=source_run_id,
                                   tags={"herd.digest": digest, "herd.uri": uri, "herd.format": fmt,
                                         "herd.role": role, "herd.step": "import", "herd.output": "model"})
    client.finalize_logged_model(m.model_id, "READY")
    return m.model_id


def read_model_metrics(client: Any, model_id: str) -> dict[str, float]:
    """The latest value of each metric attached to LoggedModel ``model_id``."""
    latest: dict[str, tuple[int, float]] = {}
    for m in client.get_logged_model(model_id).metrics or []:
        if m.key not in latest or m.timestamp >= latest[m.key][0]:
            latest[m.key] = (m.timestamp, m.value)
    return {k: v for k, (_, v) in latest.items()}


__all__ = ["attach_output_metrics", "ensure_logged_model", "log_model_metrics", "manifest_entry", "model_id_for",
           "read_model_metrics"]
