"""One call for a flow step: train on Ray Train, show progress, relay metrics, export the model and plots.

    outcome = run_train_step(ctx, job)      # in a trainer flow's step function (herd/flows/pretrain.py)

The model directory is a transformers Llama 4 checkpoint (herd.model.save_hf) with the tokenizer beside it and
`training.json` (final metrics, steps, run name, where it resumed from).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.train.plots import log_to_mlflow, write_plots
from herd.train.ray_trainer import TrainJob, TrainOutcome, run_training

if TYPE_CHECKING:
    from herd.platform.step import StepContext


class _ProgressBar:
    """A rich progress bar on a terminal (step, loss, tokens/s, MFU); one plain line per report elsewhere."""

    def __init__(self, title: str, total: int) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.total, self.title = total, title
        self.bar: Any = None
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(TextColumn(f"[bold]{title}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=self.console)
            self.task = self.bar.add_task(title, total=total, info="starting Ray Train workers")
            self.bar.start()

    def update(self, step: int, m: Mapping[str, float]) -> None:
        info = f"loss {m.get('loss', float('nan')):.3f}"
        if "alpha" in m:  # distill: the loss mixes KL and CE; show the hard-label CE and alpha too
            info += f" (CE {m.get('ce', float('nan')):.3f}, alpha {m['alpha']:.2f})"
        info += f"  {m.get('tokens_per_s', 0):,.0f} tok/s"
        if "mfu" in m:
            info += f"  MFU {100 * m['mfu']:.1f}%"
        if "eval/loss" in m:
            info += f"  held-out {m['eval/loss']:.3f}"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, info=info)
        else:
            self.console.print(f"{self.title} step {step}/{self.total}  {info}", highlight=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def train_and_export(job: TrainJob, *, out_dir: str | Path, storage: tuple[str, Any], run_name: str | None = None,
                     tokenizer: str | Path | None = None,
                     log_metrics: Callable[[Mapping[str, float], int], None] | None = None,
                     plots_dir: str | Path | None = None, progress: bool = True) -> TrainOutcome:
    cfg = job.config()
    bar = _ProgressBar(f"{job.kind}", cfg.steps) if progress else None

    def on_metrics(step: int, m: dict[str, float]) -> None:
        if log_metrics is not None:
            log_metrics(m, step)
        if bar is not None:
            bar.update(step, m)

    try:
        storage_path, storage_fs = storage
        outcome = run_training(job, storage_path=storage_path, storage_filesystem=storage_fs,
                               on_metrics=on_metrics, name=run_name)
    finally:
        if bar is not None:
            bar.close()
    if outcome.resumed_from is not None:
        print(f"[herd] {job.kind}: resumed Ray Train run {outcome.run_name} from its step-{outcome.resumed_from} "
              "checkpoint", file=sys.stderr)
    export(job, outcome, out_dir, tokenizer)
    if plots_dir is not None:
        write_plots(outcome.history, plots_dir, title=job.kind)
    return outcome


def run_train_step(ctx: StepContext, job: TrainJob) -> TrainOutcome:
    """The body of every trainer flow step: train, export to the step's `model` output (with its `tokenizer` input
    beside the weights), write the plots to its `plots` output and attach them to the step's MLflow run.

    The step declares `inputs={"tokenizer": ...}` and `outputs={"model": "model", "plots": "image"}`, and runs
    `in_driver` (the Ray Train workers need the CPUs)."""
    plots = ctx.output_dir("plots", format="png")
    outcome = train_and_export(job, out_dir=ctx.output_dir("model", format="hf"),
                               tokenizer=ctx.inputs["tokenizer"].local_path(), storage=ctx.ray_train_storage(),
                               run_name=ctx.train_run_name, log_metrics=ctx.log_metrics, plots_dir=plots)
    log_to_mlflow(ctx.tracking_uri, ctx.run_id, plots)  # in the driver: only it writes to MLflow
    return outcome


def export(job: TrainJob, outcome: TrainOutcome, out_dir: str | Path, tokenizer: str | Path | None) -> Path:
    """Save the trained weights as a transformers Llama 4 checkpoint plus the tokenizer and training.json."""
    from herd.model import Llama4, ModelConfig, save_hf

    model = Llama4(ModelConfig.model_validate(job.model))
    model.load_state_dict(outcome.model_state)
    out = save_hf(model, out_dir, tokenizer=str(tokenizer) if tokenizer is not None else None)
    summary = {"kind": job.kind, "run_name": outcome.run_name, "resumed_from": outcome.resumed_from,
               "checkpoint": outcome.checkpoint_path, "final_metrics": outcome.metrics,
               "steps": job.config().steps}
    (out / "training.json").write_text(json.dumps(summary, indent=1, default=float))
    return out
