"""The flow registry and the pipeline order.

A flow is a thin module ``herd/flows/<name>.py`` with a builder ``build(recipe) -> list[Step]`` that hands each
step only its own config section. Register it with ONE line in ``FLOWS`` below (order = pipeline order):

    "pretrain": "herd.flows.pretrain:build",

Entries are ``"module:function"`` strings so ``herd --help`` never imports torch; ``builder(name)`` imports on
use. An entry whose module does not exist yet is skipped by ``herd run`` (it runs the flows that exist) and
reported by ``herd flow NAME``.
"""

from __future__ import annotations

import importlib
import importlib.util
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
}


def builder(name: str) -> Builder:
    """The builder of flow ``name``; raises ModuleNotFoundError if its module is not written yet."""
    entry = FLOWS[name]
    if callable(entry):
        return entry
    module, _, func = entry.partition(":")
    return getattr(importlib.import_module(module), func)


def available() -> dict[str, Builder]:
    """Registered flows whose module exists, in pipeline order."""
    out: dict[str, Builder] = {}
    for name, entry in FLOWS.items():
        if not callable(entry):
            mod = entry.partition(":")[0]
            if importlib.util.find_spec(mod) is None:
                continue
        out[name] = builder(name)
    return out


__all__ = ["FLOWS", "available", "builder"]
