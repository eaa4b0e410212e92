"""pretrain flow: train the recipe's `pretrain.model` (the teacher) from scratch on the packed shards.

    herd flow pretrain                       # tiny recipe: 2 Ray Train workers on CPU, a few minutes
    herd flow pretrain --set pretrain.steps=600 --set pretrain.workers.num_workers=4

One step, `pretrain.train`, run in the driver (it hands off to Ray Train, whose 2 workers need both CPUs).
It reads the data flow's packed pretraining shards (+ the validation split for held-out loss) and tokenizer,
and writes the model (transformers Llama 4 + tokenizer; a LoggedModel with lineage to shards and tokenizer)
and the loss-curve / expert-load plots. An interrupted run resumes from its last checkpoint when re-run.
The training itself is herd.train (herd/train/api.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.flows._train import resolve_precision
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe

# the data flow's outputs this flow consumes
SHARDS, VAL, TOKENIZER = "data.pack.pretrain", "data.pack.pretrain_val", "data.tokenizer.tokenizer"


def train(ctx: StepContext) -> None:
    from herd.flows._train import run_train_step
    from herd.train.ray_trainer import TrainJob

    cfg = ctx.config["pretrain"]
    model_cfg = ctx.config[f"models.{cfg.model}"]
    shards, val = ctx.inputs["shards"], ctx.inputs["val"]
    job = TrainJob(kind="pretrain", section=cfg.model_dump(), model=model_cfg.model_dump(),
                   train_uri=shards.uri, val_uri=val.uri, data_id=shards.digest,
                   storage_options=ctx.store.storage_options or None)
    ctx.log_params({"model": cfg.model, "params": model_cfg.num_params(),
                    "active_params": model_cfg.num_active_params(), "steps": cfg.steps,
                    "workers": cfg.workers.num_workers, "precision": cfg.precision})
    run_train_step(ctx, job)


def build(recipe: Recipe) -> list[Step]:
    cfg = resolve_precision(recipe.pretrain)  # the key and `herd plan` see bf16 / fp32, never auto
    return [Step(
        "pretrain.train", train,
        config={"pretrain": cfg, f"models.{cfg.model}": recipe.models[cfg.model]},
        inputs={"shards": SHARDS, "val": VAL, "tokenizer": TOKENIZER},
        outputs={"model": "model", "plots": "image"},
        roles={"model": "teacher"},
        resources=Resources(cpus=0),  # in the driver; the Ray Train workers reserve the CPUs
        in_driver=True,
        description=f"pretrain models.{cfg.model} on Ray Train ({cfg.workers.num_workers} workers)",
    )]
