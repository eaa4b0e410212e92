"""The seam between a trainer flow step and herd.train: the step context in, plain paths and callbacks out.

    from herd.flows._train import run_train_step, resolve_precision
    def train(ctx: StepContext) -> None:            # a trainer flow's step function
        run_train_step(ctx, TrainJob(...))

Not a flow (it is not registered in herd/flows/__init__.py): a helper the trainer flows (pretrain, distill, and
the post-training ones) share. The library (herd.train.api.train_and_export) never sees the StepContext; this
module asks the context for the output directories, Ray Train's storage and run name, and hands the library a
metrics callback that relays to MLflow (through the driver) and to the step's live progress in `herd run`.
Plots reach MLflow through `ctx.log_artifacts`; run metadata (run name, resume step, final metrics) goes into the
model's manifest and the step's MLflow tags, never into the model directory, so its digest depends on the
weights alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from herd.platform.step import StepContext
    from herd.train.ray_trainer import TrainJob, TrainOutcome


def resolve_precision(section: Any) -> Any:
    """The section with `precision: auto` replaced by what it will run as (bf16 on GPUs and on CPUs with native
    bf16 matmuls, else fp32), so the cache key, `herd plan` and MLflow see the real precision.

    Resolved on the machine that builds the steps (the driver); Ray workers of a local cluster share its CPU. On a
    heterogeneous cluster set `precision` explicitly."""
    if getattr(section, "precision", None) != "auto":
        return section
    from herd.train.loop import cpu_has_native_bf16

    fast = section.workers.use_gpu or cpu_has_native_bf16()
    return section.model_copy(update={"precision": "bf16" if fast else "fp32"})


def progress_line(m: dict[str, float]) -> str:
    """One short line of a training report: loss (CE and alpha when distilling), tokens/s, MFU, held-out loss."""
    info = f"loss {m.get('loss', float('nan')):.3f}"
    if "alpha" in m:  # distill: the loss mixes KL and CE; show the hard-label CE and alpha too
        info += f" (CE {m.get('ce', float('nan')):.3f}, alpha {m['alpha']:.2f})"
    info += f"  {m.get('tokens_per_s', 0):,.0f} tok/s"
    if "mfu" in m:
        info += f"  MFU {100 * m['mfu']:.1f}%"
    if "eval/loss" in m:
        info += f"  held-out {m['eval/loss']:.3f}"
    return info


def run_train_step(ctx: StepContext, job: TrainJob) -> TrainOutcome:
    """Train, export to the step's `model` output (with its `tokenizer` input beside the weights), write the plots
    to its `plots` output and attach them to the step's MLflow run.

    The step declares `inputs={"tokenizer": ...}` and `outputs={"model": "model", "plots": "image"}`, and runs
    `in_driver` (the Ray Train workers need the CPUs)."""
    from herd.train.api import run_summary, train_and_export
    from herd.train.metrics import for_mlflow

    total = job.config().steps
    storage_path, storage_fs = ctx.ray_train_storage()
    model_dir = ctx.output_dir("model", format="hf")
    plots = ctx.output_dir("plots", format="png")

    def on_metrics(step: int, m: dict[str, float]) -> None:
        ctx.log_metrics(for_mlflow(m), step)  # MLflow's chart order; no step/tokens charts (train/metrics.py)
        ctx.progress(step, total, progress_line(m))

    ctx.progress(0, total, "starting Ray Train workers")
    outcome = train_and_export(job, out_dir=model_dir, storage_path=storage_path, storage_filesystem=storage_fs,
                               run_name=ctx.train_run_name, tokenizer=ctx.inputs["tokenizer"].local_path(),
                               on_metrics=on_metrics, plots_dir=plots)
    summary = run_summary(job, outcome)
    ctx.annotate_output("model", training=summary)
    ctx.set_tags({"herd.train.run_name": outcome.run_name,
                  "herd.train.resumed_from": "" if outcome.resumed_from is None else outcome.resumed_from})
    if outcome.resumed_from is not None:
        ctx.progress(total, total, f"resumed Ray Train run {outcome.run_name} from step {outcome.resumed_from}")
    ctx.log_artifacts(plots, "plots")
    return outcome


__all__ = ["progress_line", "resolve_precision", "run_train_step"]
