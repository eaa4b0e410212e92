"""What a run will do: for each needed step, reuse its cached record or run it, and why (`herd plan`).

    from herd.platform.plan import plan_steps, summarize
    entries = plan_steps(store, steps)   # [PlanEntry(step, action "run"|"reuse", reasons, key)]
    summarize(entries)                   # causes shared by several steps: "torch 2.13.0 -> 2.13.0+cpu: 9 steps re-run"

Reads the artifact store only (cache records and outputs, ``herd.platform.cache``); starts nothing. ``reusable`` is
the check the runner makes before it runs a step, and again once it holds the step's lease.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from herd.platform import cache
from herd.platform.graph import forced_steps, input_digests, order_steps
from herd.platform.step import Step
from herd.platform.store import ArtifactStore


@dataclass
class PlanEntry:
    step: str
    action: str  # "run" | "reuse"
    reasons: list[str] = field(default_factory=list)
    key: str | None = None


def reusable(store: ArtifactStore, step: Step, rec: cache.StepRecord) -> tuple[cache.StepRecord | None, list[str]]:
    """The finished record to reuse for ``rec`` (None if the step must run) and why. A step's ``verify_reuse``
    runs here, in the driver, on the cached outputs."""
    done = cache.cached(store, rec)
    if done is None:
        return None, cache.explain(store, rec)
    if step.verify_reuse is not None:
        try:
            outputs = {name: store.get(digest) for name, digest in done.outputs.items()}
            reason = step.verify_reuse(outputs)
        except Exception as e:  # noqa: BLE001 -- a check that cannot run cannot vouch for the outputs: re-run
            reason = f"verify_reuse failed: {type(e).__name__}: {e}"
        if reason:
            return None, [str(reason)]
    return done, [f"finished in run {done.run_id}"]


def plan_steps(store: ArtifactStore, steps: Iterable[Step], targets: Iterable[str] | None = None,
               force: Iterable[str] = ()) -> list[PlanEntry]:
    """For each needed step (``targets`` and their upstream, or all): reuse or run, and why."""
    ordered = order_steps(steps, targets)
    forced = forced_steps(ordered, force)
    entries: list[PlanEntry] = []
    known: dict[str, dict[str, str]] = {}  # step -> output -> digest (only for steps that will be reused)
    for step in ordered:
        pending_up = sorted(u for u in step.upstream() if u not in known)
        if pending_up:  # inputs unknown until upstream runs; still name this step's own changes
            rec = cache.components(step, {})
            last = cache.latest_record(store, step.name)
            own = cache.changes(last, rec, inputs=False) if last is not None else []
            entries.append(PlanEntry(step.name, "run", [f"upstream {u} will run (its outputs may change)"
                                                        for u in pending_up] + own))
            continue
        rec = cache.components(step, input_digests(step, known))
        if step.name in forced:
            entries.append(PlanEntry(step.name, "run", ["forced (--force): from scratch, fresh Ray Train run"],
                                     rec.key))
            continue
        done, why = reusable(store, step, rec)
        if done is not None:
            known[step.name] = done.outputs
            entries.append(PlanEntry(step.name, "reuse", why, rec.key))
        else:
            entries.append(PlanEntry(step.name, "run", why, rec.key))
    return entries


def summarize(entries: list[PlanEntry], min_steps: int = 2) -> list[str]:
    """One line per cause shared by several steps that will run, most steps first, e.g.
    ``torch 2.13.0 -> 2.13.0+cpu: 9 steps re-run`` (what ``herd plan`` prints above its table)."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.action == "run":
            for r in dict.fromkeys(e.reasons):
                if not r.startswith("upstream "):
                    counts[r] = counts.get(r, 0) + 1
    shared = sorted((n, r) for r, n in counts.items() if n >= min_steps)
    return [f"{r}: {n} steps re-run" for n, r in sorted(shared, key=lambda x: -x[0])]


__all__ = ["PlanEntry", "plan_steps", "reusable", "summarize"]
