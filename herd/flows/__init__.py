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
}


def builder(name: str) -> Builder:
    """The builder of flow ``name`` (imported on first use)."""
    entry = FLOWS[name]
    if callable(entry):
        return entry
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


__all__ = ["FLOWS", "builder"]
