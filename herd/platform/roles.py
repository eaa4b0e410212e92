"""The role vocabulary: what a model artifact *is* in the herd, defined once for every flow and the UI.

A step declares the role of each model output (``Step(outputs={"model": "model"}, roles={"model": "teacher"})``).
The evaluate flow derives its steps from the pipeline's model outputs by role, the deploy flow and ``herd serve``
pick models by role, the MLflow Model Registry holds one registered model per role (prefixed by recipe), and the
CLI and the UI call a model by the same name. A new stage joins by declaring a role; nothing else is edited.

    teacher   pretrained from scratch (pretrain flow)
    student   codistilled from the teacher (distill flow)
    sft       supervised fine-tuned on hard prompts (posttrain)
    rl        online RL (GRPO family) policy (posttrain)
    dpo       preference-tuned (posttrain)
    int8 / int4 / fp8   weight-quantized variants of their parent (quantize)
    external  imported from outside herd (``herd eval DIR``, ``herd serve DIR``)
"""

from __future__ import annotations

from typing import Literal, get_args

Role = Literal["teacher", "student", "sft", "rl", "dpo", "int8", "int4", "fp8", "external"]
ROLES: tuple[str, ...] = get_args(Role)
QUANTIZED_ROLES: tuple[str, ...] = ("int8", "int4", "fp8")
POSTTRAIN_ROLES: tuple[str, ...] = ("sft", "rl", "dpo")
# Pipeline order of the roles a trained model can have: a later stage's parent comes earlier here.
STAGE_ORDER: tuple[str, ...] = ("teacher", "student", "sft", "rl", "dpo", "int8", "int4", "fp8", "external")


def check_role(role: str) -> str:
    """``role`` if it is in the vocabulary, else a ValueError that lists the vocabulary."""
    if role not in ROLES:
        raise ValueError(f"unknown model role {role!r}; use one of {', '.join(ROLES)}")
    return role


def model_name(recipe_name: str, role: str) -> str:
    """The one name of a model in the CLI, the MLflow UI and the Model Registry: ``<recipe>-<role>``."""
    return f"{recipe_name}-{check_role(role)}"


__all__ = ["POSTTRAIN_ROLES", "QUANTIZED_ROLES", "ROLES", "STAGE_ORDER", "Role", "check_role", "model_name"]
