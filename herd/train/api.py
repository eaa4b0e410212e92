"""One call to train a model on Ray Train and export it: plain paths, configs and callbacks in, a TrainOutcome out.

    outcome = train_and_export(job, out_dir="model/", storage_path="/store/train/pretrain.train",
                               run_name="pretrain-train-1a2b3c", tokenizer="tok/", plots_dir="plots/",
                               on_metrics=lambda step, m: print(step, m["loss"]))
    run_summary(job, outcome)   # run metadata (run name, resume step, final metrics) for a manifest or MLflow

herd.train never sees the platform's StepContext: a flow step translates its context into these arguments
(herd/flows/_train.py). The model directory holds only what the weights determine (a transformers Llama 4
checkpoint from herd.model.save_hf, the tokenizer beside it), so two runs that train identical weights export
byte-identical directories and the artifact store gives them one digest: downstream steps are reused.
Run metadata (timings, tokens/s, run names, where it resumed from) goes to the caller via `run_summary`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from herd.train.plots import write_plots
from herd.train.ray_trainer import TrainJob, TrainOutcome, run_training

MetricsCallback = Callable[[int, dict[str, float]], None]


def train_and_export(job: TrainJob, *, out_dir: str | Path, storage_path: str, storage_filesystem: Any = None,
                     run_name: str | None = None, tokenizer: str | Path | None = None,
                     on_metrics: MetricsCallback | None = None, plots_dir: str | Path | None = None
                     ) -> TrainOutcome:
    """Train `job` on Ray Train, save the weights (+ tokenizer) to `out_dir`, and the plots to `plots_dir`.

    `storage_path` (+ an optional pyarrow `storage_filesystem`) and `run_name` are Ray Train's RunConfig: a run of
    the same name under the same storage resumes from its last checkpoint, so callers keep them stable per
    (step, configuration) and change the name to start from scratch. `on_metrics(step, metrics)` is called in
    this thread for every report of rank 0 (live metrics: relay them to MLflow, draw a progress bar)."""
    outcome = run_training(job, storage_path=storage_path, storage_filesystem=storage_filesystem,
                           on_metrics=on_metrics, name=run_name)
    export(job, outcome, out_dir, tokenizer)
    if plots_dir is not None:
        write_plots(outcome.history, plots_dir, title=job.kind)
    return outcome


def export(job: TrainJob, outcome: TrainOutcome, out_dir: str | Path, tokenizer: str | Path | None) -> Path:
    """Save the trained weights as a transformers Llama 4 checkpoint plus the tokenizer (nothing run-specific:
    the directory's content, hence its digest, depends on the weights only)."""
    from herd.model import Llama4, ModelConfig, save_hf

    model = Llama4(ModelConfig.model_validate(job.model))
    model.load_state_dict(outcome.model_state)
    return save_hf(model, out_dir, tokenizer=str(tokenizer) if tokenizer is not None else None)


def run_summary(job: TrainJob, outcome: TrainOutcome) -> dict[str, Any]:
    """What this run was (Ray Train run name, resumed-from step, checkpoint, final metrics): metadata for the
    model's manifest and the MLflow run, kept out of the model directory so it never changes the digest."""
    return {"kind": job.kind, "run_name": outcome.run_name, "resumed_from": outcome.resumed_from,
            "checkpoint": outcome.checkpoint_path, "steps": job.config().steps,
            "final_metrics": {k: float(v) for k, v in outcome.metrics.items()}}


__all__ = ["MetricsCallback", "export", "run_summary", "train_and_export"]
