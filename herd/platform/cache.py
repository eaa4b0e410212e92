"""Step cache keys, finished-step records, and the "why does this step run" explanation behind ``herd plan``.

key = sha256(step name, herd version, code hash, resolved config JSON, input digests, declared outputs). The code hash covers the
step function's source and the source files of the library modules the step declares in ``Step.code``.
A finished step leaves ``steps/<name>/<key>.json`` (and ``latest.json``) in the artifact store with every
component, so a later plan can name exactly what changed: a config field (old -> new), an input, the code, or
herd's version.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import herd
from herd.platform.errors import FlowError
from herd.platform.step import Step
from herd.platform.store import ArtifactStore


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def code_hash(step: Step) -> str:
    """sha256 of the step function's source plus the source of every module in ``step.code``."""
    h = hashlib.sha256()
    try:
        h.update(inspect.getsource(step.fn).encode())
    except (OSError, TypeError):  # no source (built in a REPL): fall back to the bytecode
        h.update(getattr(getattr(step.fn, "__code__", None), "co_code", repr(step.fn).encode()))
    for mod in sorted(step.code):
        spec = importlib.util.find_spec(mod)
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            raise FlowError(f"step {step.name}: code module {mod!r} was not found; list importable modules")
        with open(spec.origin, "rb") as f:
            h.update(mod.encode() + b"\0" + f.read())
    return h.hexdigest()


@dataclass
class StepRecord:
    """A finished step: its cache key, every component of the key, and what it produced."""

    step: str
    key: str
    version: str
    code_hash: str
    config: dict[str, Any]
    inputs: dict[str, str]  # local input name -> artifact digest
    declared: dict[str, str] = field(default_factory=dict)  # declared output name -> kind
    outputs: dict[str, str] = field(default_factory=dict)  # output name -> artifact digest
    models: dict[str, str] = field(default_factory=dict)  # output name -> MLflow LoggedModel id
    run_id: str | None = None
    flow_run_id: str | None = None
    tracking_uri: str | None = None
    finished_at: float = 0.0
    duration_s: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StepRecord:
        data = json.loads(text)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def components(step: Step, input_digests: dict[str, str]) -> StepRecord:
    """The cache-key components of ``step`` given its inputs' digests, as an unfinished record."""
    rec = StepRecord(step=step.name, key="", version=herd.__version__, code_hash=code_hash(step),
                     config=step.config_json(), inputs=dict(sorted(input_digests.items())),
                     declared=dict(sorted(step.outputs.items())))
    rec.key = hashlib.sha256(_canon([rec.step, rec.version, rec.code_hash, rec.config, rec.inputs,
                                     rec.declared]).encode()).hexdigest()
    return rec


def record_key(step: str, key: str) -> str:
    return f"steps/{step}/{key}.json"


def save_record(store: ArtifactStore, rec: StepRecord) -> None:
    """Write the record, then ``latest.json`` (the last finished run of this step, used by ``explain``)."""
    rec.finished_at = rec.finished_at or time.time()
    text = rec.to_json()
    store.write_text(record_key(rec.step, rec.key), text)
    store.write_text(f"steps/{rec.step}/latest.json", text)


def load_record(store: ArtifactStore, step: str, key: str) -> StepRecord | None:
    text = store.read_text(record_key(step, key))
    return StepRecord.from_json(text) if text else None


def latest_record(store: ArtifactStore, step: str) -> StepRecord | None:
    text = store.read_text(f"steps/{step}/latest.json")
    return StepRecord.from_json(text) if text else None


def cached(store: ArtifactStore, rec: StepRecord) -> StepRecord | None:
    """The finished record for ``rec.key`` if it exists and all its outputs are still committed."""
    done = load_record(store, rec.step, rec.key)
    if done is None or not all(store.has(d) for d in done.outputs.values()):
        return None
    return done


def diff_config(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Field paths whose values differ between two JSON trees, with (old, new)."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            sub = f"{path}.{k}" if path else str(k)
            if k not in old:
                out.append((sub, "<unset>", new[k]))
            elif k not in new:
                out.append((sub, old[k], "<unset>"))
            else:
                out.extend(diff_config(old[k], new[k], sub))
        return out
    return [] if old == new else [(path, old, new)]


def explain(store: ArtifactStore, rec: StepRecord) -> list[str]:
    """Why a step whose key has no finished record must run, compared with its last finished run."""
    if load_record(store, rec.step, rec.key) is not None:
        return ["outputs are missing from the store (deleted or another store); re-making them"]
    last = latest_record(store, rec.step)
    if last is None:
        return ["never ran"]
    reasons = [f"config {p}: {_short(o)} -> {_short(n)}" for p, o, n in diff_config(last.config, rec.config)]
    for name in sorted(set(last.inputs) | set(rec.inputs)):
        o, n = last.inputs.get(name), rec.inputs.get(name)
        if o != n:
            reasons.append(f"input {name} changed: {(o or '<none>')[:12]} -> {(n or '<none>')[:12]}")
    if last.declared != rec.declared:
        reasons.append(f"declared outputs changed: {_short(last.declared)} -> {_short(rec.declared)}")
    if last.code_hash != rec.code_hash:
        reasons.append("code changed (the step function or a module it declares)")
    if last.version != rec.version:
        reasons.append(f"herd version {last.version} -> {rec.version}")
    return reasons or ["no finished run with this key (an earlier run did not finish)"]


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["StepRecord", "cached", "code_hash", "components", "diff_config", "explain", "latest_record",
           "load_record", "save_record"]
