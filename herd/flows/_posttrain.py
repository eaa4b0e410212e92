"""The post-training flows' shared step helper (sft, rl, dpo): the paired held-out comparison with the parent.

    from herd.flows._posttrain import report_vs_parent

Kept apart from ``herd.flows._train`` (which pretrain and distill import too) so that post-training code joins
only the post-training steps' cache keys (``herd.platform.cache.code_closure`` follows imports): an edit in
``herd.posttrain`` re-runs sft/rl/dpo, never the teacher's pretraining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herd.platform.step import StepContext


def report_vs_parent(ctx: StepContext, step: int) -> dict[str, float]:
    """Measure the step's new model against its parent on held-out items (paired), log the metrics at ``step``
    and write them with the per-item results as the ``report`` output (``vs_parent.json``). For the post-training
    steps, whose inputs name ``parent``, ``tokenizer`` and ``tasks``."""
    import json

    from herd.posttrain.stage import measure

    ctx.progress(0, 1, "held-out comparison with the parent")
    metrics, items = measure(ctx.output_dir("model"), ctx.inputs["parent"].local_path(),
                             ctx.inputs["tokenizer"].local_path(), ctx.inputs["tasks"].local_path(),
                             ctx.config["posttrain.eval_items"])
    ctx.log_metrics(metrics, step=step)
    (ctx.output_dir("report", format="json") / "vs_parent.json").write_text(
        json.dumps({"metrics": metrics, "items": items}, indent=1))
    return metrics
