"""Step cache keys, finished-step records, and the "why does this step run" explanation behind ``herd plan``.

key = sha256(step name, herd version, code hash, resolved config JSON, input digests, declared outputs, environment
fingerprint). The code hash covers the step function's source and its code closure (``code_closure``): every file
of every herd library package its module imports, transitively (herd.train, herd.model, herd.data, ...), the
herd.flows helpers it imports, and anything named in ``Step.code``; herd.platform and the CLI are left out, so a
cosmetic edit there does not retrain every model. The environment fingerprint is the versions of Python, torch,
ray, transformers and tokenizers.
A finished step leaves ``steps/<name>/<key>.json`` (and ``latest.json``) in the artifact store with every
component, so a later plan can name exactly what changed: a config field (old -> new), an input, the code, or
herd's version.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import herd
from herd.platform.errors import FlowError
from herd.platform.step import Step
from herd.platform.store import ArtifactStore


def _canon(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


_EXCLUDED = ("herd.platform", "herd.cli", "herd.__main__")  # cosmetic edits there must not retrain every model
_DATA_SUFFIXES = (".py", ".json", ".yaml", ".yml", ".txt", ".jinja")  # package files that can change behaviour
ENV_PACKAGES = ("torch", "ray", "transformers", "tokenizers")
_file_cache: dict[tuple[str, int, int], tuple[str, frozenset[str]]] = {}


def _herd_root() -> Path:
    spec = importlib.util.find_spec("herd")
    assert spec is not None and spec.submodule_search_locations  # we are running inside it
    return Path(next(iter(spec.submodule_search_locations)))


def _scan(path: Path, module: str) -> tuple[str, frozenset[str]]:
    """(sha256 of the file, the herd modules it imports anywhere: module level or inside functions)."""
    st = path.stat()
    ck = (str(path), st.st_mtime_ns, st.st_size)
    if ck in _file_cache:
        return _file_cache[ck]
    data = path.read_bytes()
    found: set[str] = set()
    if path.suffix == ".py":
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(data, filename=str(path))):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import: resolve against this module's package
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                found.add(base)
                found.update(f"{base}.{a.name}" for a in node.names)  # `from herd.train import loop`
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                  and isinstance(node.args[0].value, str)):
                found.add(node.args[0].value)  # importlib.import_module("herd.x.y")
    out = (hashlib.sha256(data).hexdigest(), frozenset(m for m in found if m == "herd" or m.startswith("herd.")))
    _file_cache[ck] = out
    return out


def _unit(module: str) -> str | None:
    """What a herd import pulls into the key: a whole library package (herd.train, herd.model, herd.data, ...,
    every module and subpackage, so a lazily imported or string-dispatched module is never missed), or one
    module of herd.flows (a flow's own helpers). herd.platform and the CLI are left out."""
    parts = module.split(".")
    if parts[0] != "herd" or len(parts) < 2 or module.startswith(_EXCLUDED):
        return None
    if parts[1] == "flows":
        return ".".join(parts[:3]) if len(parts) > 2 else None
    return ".".join(parts[:2])


def _unit_files(unit: str, root: Path) -> list[tuple[str, Path]]:
    """(name, file) pairs of a unit: a herd package's files, or one module's file."""
    rel = Path(*unit.split(".")[1:])
    if (root / rel).is_dir():
        files = sorted(p for p in (root / rel).rglob("*") if p.is_file() and p.suffix in _DATA_SUFFIXES
                       and "__pycache__" not in p.parts)
        return [(_name(p, root), p) for p in files]
    py = (root / rel).with_suffix(".py")
    return [(unit, py)] if py.exists() else []


def _name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent)
    return ".".join(rel.with_suffix("").parts) if path.suffix == ".py" else rel.as_posix()


def _module_origin(mod: str) -> str | None:
    """The .py file of a module outside herd (a loaded one, ``__main__`` of a script included), if any."""
    loaded = sys.modules.get(mod)
    origin = getattr(loaded, "__file__", None)
    if origin is None and mod:
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):  # ValueError: __main__ without a spec (python -c, a REPL)
            spec = None
        origin = spec.origin if spec is not None else None
    return origin if origin and origin.endswith(".py") else None


def code_closure(step: Step) -> dict[str, str]:
    """``{module: sha256}`` of every source file the step can execute: the step function's module (and, for a
    module outside herd, its file), the flow helpers it imports, and the whole of every herd library package
    reachable through imports (transitively), plus the modules named in ``Step.code``."""
    root = _herd_root()
    out: dict[str, str] = {}
    pending: list[str] = []
    explicit = {_unit(m) or m for m in step.code}
    fn_module = getattr(step.fn, "__module__", None) or ""
    for mod in [fn_module, *step.code]:
        if (mod == "herd" or mod.startswith("herd.")) and not (mod in step.code and mod.startswith(_EXCLUDED)):
            if not mod.startswith(_EXCLUDED):  # a platform step function: its own source is hashed by code_hash
                pending.append(_unit(mod) or mod)
            continue
        origin = _module_origin(mod)
        if origin is None:
            if mod in step.code:
                raise FlowError(f"step {step.name}: code module {mod!r} was not found; list importable modules")
            continue  # a step function defined in a REPL: its source is hashed by code_hash
        digest, imports = _scan(Path(origin), mod)
        # a script's functions belong to __main__ when it runs, to its module name when imported: same code
        out[Path(origin).stem if mod == "__main__" else mod] = digest
        pending.extend(u for m in imports if (u := _unit(m)))
    seen: set[str] = set()
    while pending:
        unit = pending.pop()
        if unit in seen:
            continue
        seen.add(unit)
        files = _unit_files(unit, root)
        if not files and unit not in explicit and _unit_files(unit.rpartition(".")[0], root):
            continue  # `from herd.flows import ModelOutput`: a name defined in a package, not a module of it
        if not files:
            raise FlowError(f"step {step.name}: code module {unit!r} was not found under {root}; list importable "
                            "modules in Step.code")
        for name, path in files:
            digest, imports = _scan(path, name)
            out[name] = digest
            pending.extend(u for m in imports if (u := _unit(m)) and u not in seen)
    return dict(sorted(out.items()))


def code_hash(step: Step, closure: dict[str, str] | None = None) -> str:
    """sha256 of the step function's source plus every file of its code closure (``code_closure``)."""
    h = hashlib.sha256()
    try:
        h.update(inspect.getsource(step.fn).encode())
    except (OSError, TypeError):  # no source (built in a REPL): fall back to the bytecode
        h.update(getattr(getattr(step.fn, "__code__", None), "co_code", repr(step.fn).encode()))
    for name, digest in (closure if closure is not None else code_closure(step)).items():
        h.update(name.encode() + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()


def env_fingerprint() -> dict[str, str]:
    return dict(_env())


@lru_cache(maxsize=1)
def _env() -> tuple[tuple[str, str], ...]:
    """Versions of the packages whose behaviour changes results (and of Python), in the environment that runs
    the step. Read in the driver: in-driver steps run there, and Ray workers of herd's clusters run the same
    environment (same image / venv); a cluster whose workers differ must pin them to the driver's."""
    out = {"python": ".".join(map(str, sys.version_info[:3]))}
    for pkg in ENV_PACKAGES:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return tuple(out.items())


@dataclass
class StepRecord:
    """A finished step: its cache key, every component of the key, and what it produced."""

    step: str
    key: str
    version: str
    code_hash: str
    config: dict[str, Any]
    inputs: dict[str, str]  # local input name -> artifact digest
    code: dict[str, str] = field(default_factory=dict)  # module -> sha256 of its file (the code closure)
    env: dict[str, str] = field(default_factory=dict)  # package -> version (env_fingerprint)
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
    closure = code_closure(step)
    rec = StepRecord(step=step.name, key="", version=herd.__version__, code_hash=code_hash(step, closure),
                     config=step.config_json(), inputs=dict(sorted(input_digests.items())),
                     declared=dict(sorted(step.outputs.items())), code=closure, env=env_fingerprint())
    rec.key = hashlib.sha256(_canon([rec.step, rec.version, rec.code_hash, rec.config, rec.inputs,
                                     rec.declared, rec.env]).encode()).hexdigest()
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


def _forced_key(step: str, key: str) -> str:
    return f"steps/{step}/forced-{key[:16]}.json"


def mark_forced(store: ArtifactStore, step: str, key: str, attempt: str) -> None:
    """A forced re-run (``herd run --force``) started: until it finishes, the old record is not reused."""
    store.write_text(_forced_key(step, key), json.dumps({"attempt": attempt, "started_at": time.time()}))


def forced_attempt(store: ArtifactStore, step: str, key: str) -> dict[str, Any] | None:
    """The unfinished forced re-run of (step, key), if one started and did not finish."""
    text = store.read_text(_forced_key(step, key))
    return json.loads(text) if text else None


def clear_forced(store: ArtifactStore, step: str, key: str) -> None:
    store.delete(_forced_key(step, key))


def cached(store: ArtifactStore, rec: StepRecord) -> StepRecord | None:
    """The finished record for ``rec.key`` if it exists, all its outputs are still committed, and no forced
    re-run of it is unfinished (a forced run that crashed is never silently replaced by the old record)."""
    if forced_attempt(store, rec.step, rec.key) is not None:
        return None
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
    """Why a step whose key has no reusable record must run, compared with its last finished run."""
    forced = forced_attempt(store, rec.step, rec.key)
    if forced is not None:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(forced.get("started_at", 0)))
        why = (f"a forced re-run (--force) started {when} did not finish: running it again (it resumes that "
               "attempt, never the older record)")
        return [why]
    if load_record(store, rec.step, rec.key) is not None:
        return ["outputs are missing from the store (deleted or another store); re-making them"]
    last = latest_record(store, rec.step)
    if last is None:
        return ["never ran"]
    return changes(last, rec) or ["no finished run with this key (an earlier run did not finish)"]


def changes(last: StepRecord, rec: StepRecord, inputs: bool = True) -> list[str]:
    """Each key component of ``rec`` that differs from ``last``: config fields (old -> new), package versions,
    code modules, inputs (unless ``inputs`` is False: not known yet while upstream steps will run), herd's
    version. One string per reason, the same string for the same cause in every step (``summarize`` groups)."""
    reasons = [f"config {p}: {_short(o)} -> {_short(n)}" for p, o, n in diff_config(last.config, rec.config)]
    if inputs:
        for name in sorted(set(last.inputs) | set(rec.inputs)):
            o, n = last.inputs.get(name), rec.inputs.get(name)
            if o != n:
                reasons.append(f"input {name} changed: {(o or '<none>')[:12]} -> {(n or '<none>')[:12]}")
    if last.declared != rec.declared:
        reasons.append(f"declared outputs changed: {_short(last.declared)} -> {_short(rec.declared)}")
    for pkg in sorted(set(last.env) | set(rec.env)) if last.env else []:
        o, n = last.env.get(pkg, "absent"), rec.env.get(pkg, "absent")
        if o != n:
            reasons.append(f"{pkg} {o} -> {n}")
    if last.env == {} and rec.env:
        reasons.append("the environment fingerprint is new (recorded by an older herd)")
    if last.code_hash != rec.code_hash:
        changed = sorted(m for m in set(last.code) | set(rec.code) if last.code.get(m) != rec.code.get(m))
        if not last.code:
            reasons.append("code changed (the record predates per-module code hashes)")
        elif not changed:
            reasons.append("code changed: the step function")
        else:
            more = f" and {len(changed) - 3} more" if len(changed) > 3 else ""
            reasons.append(f"code changed: {', '.join(changed[:3])}{more}")
    if last.version != rec.version:
        reasons.append(f"herd version {last.version} -> {rec.version}")
    return reasons


def _short(v: Any) -> str:
    text = json.dumps(v, default=str) if not isinstance(v, str) else v
    return text if len(text) <= 40 else text[:37] + "..."


__all__ = ["StepRecord", "cached", "changes", "clear_forced", "code_closure", "code_hash", "components",
           "diff_config", "env_fingerprint", "explain", "forced_attempt", "latest_record", "load_record",
           "mark_forced", "save_record"]
