"""The step graph: a run's steps validated and ordered, `--force` names resolved, a step's input digests.

    from herd.platform.graph import order_steps
    ordered = order_steps(steps, targets=["distill.train"])   # the needed steps, upstream first

Pure functions over ``Step`` declarations: no store, Ray or MLflow. ``herd.platform.plan`` decides which of the
ordered steps run; ``herd.platform.runner`` schedules them.
"""

from __future__ import annotations

from collections.abc import Iterable

from herd.platform.errors import FlowError
from herd.platform.step import Step


def order_steps(steps: Iterable[Step], targets: Iterable[str] | None = None) -> list[Step]:
    """Validate the DAG (unique names, known inputs, no cycles) and return the needed steps in topo order."""
    by_name: dict[str, Step] = {}
    for s in steps:
        if s.name in by_name:
            raise FlowError(f"two steps are named {s.name!r}; step names must be unique across flows")
        by_name[s.name] = s
    for s in by_name.values():
        for local, ref in s.inputs.items():
            up, out = ref.rsplit(".", 1)
            if up not in by_name:
                raise FlowError(f"step {s.name}: input {local} = {ref!r} names no step; known steps: "
                                f"{', '.join(sorted(by_name))}")
            if out not in by_name[up].outputs:
                raise FlowError(f"step {s.name}: input {local} = {ref!r}: step {up} has no output {out!r} "
                                f"(outputs: {', '.join(by_name[up].outputs) or 'none'})")
    wanted = set(by_name) if targets is None else set()
    stack = list(targets or [])
    while stack:
        name = stack.pop()
        if name not in by_name:
            raise FlowError(f"unknown step {name!r}; known steps: {', '.join(sorted(by_name))}")
        if name not in wanted:
            wanted.add(name)
            stack.extend(by_name[name].upstream())
    order: list[Step] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(name: str, trail: tuple[str, ...]) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise FlowError(f"steps form a cycle: {' -> '.join((*trail, name))}")
        state[name] = 1
        for up in sorted(by_name[name].upstream()):
            visit(up, (*trail, name))
        state[name] = 2
        order.append(by_name[name])

    for s in by_name.values():  # registration order, so flows keep pipeline order
        if s.name in wanted:
            visit(s.name, ())
    return order


def forced_steps(ordered: list[Step], force: Iterable[str]) -> set[str]:
    """``--force`` names: step names (``pretrain.train``) or flow names (``pretrain``: all its steps)."""
    names = {s.name for s in ordered}
    flows = {s.flow for s in ordered}
    out: set[str] = set()
    for f in force:
        if f in names:
            out.add(f)
        elif f in flows:
            out.update(s.name for s in ordered if s.flow == f)
        else:
            raise FlowError(f"--force {f!r} names no step or flow of this run; steps: {', '.join(sorted(names))}")
    return out


def input_digests(step: Step, known: dict[str, dict[str, str]]) -> dict[str, str]:
    """The step's inputs (local name -> digest) from ``known`` (step -> output -> digest) of its finished
    upstream steps."""
    out = {}
    for local, ref in step.inputs.items():
        up, name = ref.rsplit(".", 1)
        out[local] = known[up][name]
    return out


__all__ = ["forced_steps", "input_digests", "order_steps"]
