"""The flow registry and the pipeline order.

A flow is a thin module ``herd/flows/<name>.py`` with a builder ``build(recipe) -> list[Step]`` that hands each
step only its own config section. Register it with ONE line in ``FLOWS`` below (order = pipeline order):

    "pretrain": "herd.flows.pretrain:build",

Entries are ``"module:function"`` strings so ``herd --help`` never imports torch; ``builder(name)`` imports on
use. Register a flow in the same change that adds its module: an entry that cannot be imported is an error.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from herd.platform.config import Recipe
    from herd.platform.step import Step

Builder = Callable[["Recipe"], list["Step"]]

# Pipeline order. One line per flow.
FLOWS: dict[str, str | Builder] = {
    "data": "herd.flows.data:build",
    "pretrain": "herd.flows.pretrain:build",
    "distill": "herd.flows.distill:build",
    "sft": "herd.flows.sft:build",
    "rl": "herd.flows.rl:build",
    "dpo": "herd.flows.dpo:build",
    "quantize": "herd.flows.quantize:build",
    "evaluate": "herd.flows.evaluate:build",
    "deploy": "herd.flows.deploy:build",
}


def builder(name: str) -> Builder:
    """The builder of flow ``name`` (imported on first use)."""
    entry = FLOWS[name]
    if callable(entry):
        return entry
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


@dataclass(frozen=True)
class ModelOutput:
    """A model output of a registered flow, found by the role its step declares (``Step.roles``)."""

    ref: str  # "<step>.<output>"
    role: str
    parent: str | None  # the ref of the model it was made from (an input of its step with a role), if any


def model_outputs(recipe: Recipe, before: str) -> list[ModelOutput]:
    """Every model output with a role in the flows registered before flow ``before``, in pipeline order.

    How quantize, evaluate and deploy find their models: a new stage joins by declaring a role, with no edit to
    them. Only upstream flows are built, so flows that look for models never build each other in a cycle."""
    steps = []
    for name in FLOWS:
        if name == before:
            break
        steps += builder(name)(recipe)
    refs = {f"{s.name}.{o}" for s in steps for o in s.roles}
    out = []
    for s in steps:
        parent = next((ref for ref in s.inputs.values() if ref in refs), None)
        out += [ModelOutput(f"{s.name}.{o}", r, parent) for o, r in s.roles.items()]
    return out


__all__ = ["FLOWS", "ModelOutput", "builder", "model_outputs"]
