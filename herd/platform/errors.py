"""Typed errors of the platform layer: a one-line headline that says what is wrong and how to fix it.

The CLI prints ``str(err)`` of any ``HerdError`` as one line and exits 2 (bad input) or 1 (a failed run);
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HerdError(Exception):
    """Base of every error herd raises on purpose (bad input, a missing artifact, a failed step)."""

    exit_code = 1


class RecipeError(HerdError, ValueError):
    """A recipe (file, built-in name or ``--set`` override) that does not validate."""

    exit_code = 2


class StoreError(HerdError):
    """The artifact store refused a path or an artifact is missing or corrupt."""


class FlowError(HerdError):
    """A flow or pipeline is malformed (unknown step, missing input, cycle) or a step failed."""


class StepFailed(FlowError):
    """A step raised; carries the step name and the remote traceback's last line."""

    def __init__(self, step: str, message: str):
        super().__init__(f"step {step} failed: {message}")
        self.step = step


class LineageError(HerdError):
    """An id passed to the lineage API names no known artifact, model or run."""
