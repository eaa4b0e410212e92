"""distill flow: codistill the recipe's student from the frozen, pretrained teacher (Llama 4's Scout recipe).

    herd flow distill                        # runs pretrain first if its model is not cached
    herd flow distill --set distill.alpha.rule=fixed --set distill.alpha.value=0.5

One step, `distill.train`, run in the driver (Ray Train workers need the CPUs). Each worker holds the student
and the frozen teacher and computes teacher logits on the fly; the loss is
alpha*T^2*KL(teacher_T || student_T) + (1-alpha)*CE with alpha adapted during training (herd.train.losses).
Outputs: the student (transformers Llama 4 + tokenizer; a LoggedModel with lineage to the shards, the tokenizer
and the teacher model) and the plots. An interrupted run resumes from its last checkpoint when re-run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from herd.flows._train import resolve_precision
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe

SHARDS, VAL, TOKENIZER = "data.pack.pretrain", "data.pack.pretrain_val", "data.tokenizer.tokenizer"
TEACHER = "pretrain.train.model"


def train(ctx: StepContext) -> None:
    from herd.flows._train import run_train_step
    from herd.train.ray_trainer import TrainJob

    cfg = ctx.config["distill"]
    student, teacher = ctx.config[f"models.{cfg.student}"], ctx.config[f"models.{cfg.teacher}"]
    shards, val, teacher_art = ctx.inputs["shards"], ctx.inputs["val"], ctx.inputs["teacher"]
    job = TrainJob(kind="distill", section=cfg.model_dump(), model=student.model_dump(),
                   train_uri=shards.uri, val_uri=val.uri, data_id=shards.digest,
                   teacher=teacher.model_dump(), teacher_uri=teacher_art.uri, teacher_id=teacher_art.digest,
                   storage_options=ctx.store.storage_options or None)
    ctx.log_params({"student": cfg.student, "teacher": cfg.teacher, "params": student.num_params(),
                    "teacher_params": teacher.num_params(), "alpha_rule": cfg.alpha.rule,
                    "temperature": cfg.temperature, "steps": cfg.steps})
    run_train_step(ctx, job)


def build(recipe: Recipe) -> list[Step]:
    cfg = resolve_precision(recipe.distill)  # the key and `herd plan` see bf16 / fp32, never auto
    return [Step(
        "distill.train", train,
        config={"distill": cfg, f"models.{cfg.student}": recipe.models[cfg.student],
                f"models.{cfg.teacher}": recipe.models[cfg.teacher]},
        inputs={"shards": SHARDS, "val": VAL, "tokenizer": TOKENIZER, "teacher": TEACHER},
        outputs={"model": "model", "plots": "image"},
        roles={"model": "student"},
        resources=Resources(cpus=0),
        in_driver=True,
        description=f"codistill models.{cfg.student} from models.{cfg.teacher} (alpha: {cfg.alpha.rule})",
    )]
