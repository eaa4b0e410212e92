"""Recipes: one YAML file, validated by one pydantic model per section, plus ``--set`` overrides.

Precedence is ``--set section.key=value`` > recipe file > section defaults (the ``tiny`` values). A recipe is a
built-in name (``tiny`` the default, ``scout``, ``maverick``; YAML files in ``herd/platform/recipes/``) or a path
to a YAML file. A file may start from another recipe with a top-level ``base: <name or path>`` key; its own keys
then override the base's, deeply.

    from herd.platform.config import load_recipe
    recipe = load_recipe("tiny", ["pretrain.steps=50", "models.student.hidden_size=128"])
    recipe.pretrain            # each library receives its own section, never the whole Recipe

A recipe that does not validate raises ``RecipeError`` with ONE line: the field path, the bad value and what is
allowed. Loading never touches HERD_HOME or anything else on disk.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from herd.data.config import DataConfig
from herd.model.config import ModelConfig
from herd.platform.errors import RecipeError
from herd.platform.redact import redact_config, redact_override
from herd.platform.sections import DeployConfig, EvaluateConfig, PostTrainConfig, QuantizeConfig
from herd.train.config import DistillConfig, PretrainConfig

DEFAULT_RECIPE = "tiny"
SECTIONS = ("runtime", "data", "models", "pretrain", "distill", "posttrain", "quantize", "evaluate", "deploy")


class RuntimeConfig(BaseModel):
    """``runtime`` section: where herd keeps state and which services it uses.

    Every field left empty means the embedded default: a local Ray started by the command (or the one
    ``herd up`` left running), MLflow on sqlite at ``$HERD_HOME/mlflow.db``, artifacts at ``$HERD_HOME/artifacts``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    home: str | None = Field(None, description="herd's state dir; empty = $HERD_HOME, else ./.herd.")
    store: str | None = Field(None, description="Artifact store root: a path, file://... or s3://bucket/prefix; "
                              "empty = $HERD_HOME/artifacts.")
    tracking_uri: str | None = Field(None, description="MLflow tracking URI (http://host:5000, sqlite:///...); "
                                     "empty = sqlite:///$HERD_HOME/mlflow.db.")
    ray_address: str | None = Field(None, description="Ray cluster to attach to (ray://..., host:port, auto); "
                                    "empty = the `herd up` head if running, else a local Ray for this command.")
    experiment: str = Field("herd", min_length=1, description="MLflow experiment that holds the flow runs.")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for the store (e.g. endpoint_url, key, secret for s3); "
        "empty = credentials and endpoint from the environment (AWS_*).")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray (empty = all cores).")
    object_store_mb: int | None = Field(None, ge=64, description="Object store of a local Ray in MiB "
                                        "(empty = Ray's default, 30% of RAM).")
    dashboard_port: int = Field(8265, ge=1, le=65535, description="Dashboard port of a local Ray.")

    def resolved_home(self) -> Path:
        return Path(self.home or os.environ.get("HERD_HOME") or ".herd").expanduser().resolve()

    def resolved_store(self) -> str:
        return self.store or str(self.resolved_home() / "artifacts")

    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.resolved_home() / 'mlflow.db'}"


def _tiny_models() -> dict[str, ModelConfig]:
    # Teacher ~2x the student's width; both share the tokenizer (vocab filled from data.tokenizer).
    return {
        "teacher": ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4),
        "student": ModelConfig(vocab_size=4096, hidden_size=128, num_hidden_layers=4, intermediate_size=256,
                               intermediate_size_mlp=512),
    }


class Recipe(BaseModel):
    """A whole herd recipe: one validated model per section."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    runtime: RuntimeConfig = Field(default_factory=RuntimeConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    models: dict[str, ModelConfig] = Field(default_factory=_tiny_models,
                                           description="Named model shapes; must hold teacher and student.")
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    posttrain: PostTrainConfig = Field(default_factory=PostTrainConfig)
    quantize: QuantizeConfig = Field(default_factory=QuantizeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    deploy: DeployConfig = Field(default_factory=DeployConfig)

    _source: str = PrivateAttr("defaults")

    @model_validator(mode="before")
    @classmethod
    def _inherit_vocab(cls, data: Any) -> Any:
        # A model that does not set vocab_size takes the tokenizer's: they must agree (checked below).
        if not isinstance(data, dict) or not isinstance(data.get("models"), dict):
            return data
        tok = ((data.get("data") or {}).get("tokenizer") or {}) if isinstance(data.get("data"), dict) else {}
        vocab = tok.get("vocab_size", 4096) if isinstance(tok, dict) else 4096
        models = {}
        for name, m in data["models"].items():
            if isinstance(m, dict) and "vocab_size" not in m:
                m = {**m, "vocab_size": vocab}
            models[name] = m
        return {**data, "models": models}

    @model_validator(mode="after")
    def _cross_section(self) -> Recipe:
        for need in ("teacher", "student"):
            if need not in self.models:
                raise ValueError(f"models.{need} is missing: models must name a teacher and a student "
                                 f"(has {sorted(self.models)})")
        refs = [("pretrain.model", self.pretrain.model), ("distill.student", self.distill.student),
                ("distill.teacher", self.distill.teacher), ("posttrain.model", self.posttrain.model),
                ("quantize.model", self.quantize.model), ("deploy.model", self.deploy.model)]
        for path, name in refs:
            if name not in self.models:
                raise ValueError(f"{path} = {name!r} names no model; allowed: {', '.join(sorted(self.models))}")
        vocab = self.data.tokenizer.vocab_size
        for name, m in self.models.items():
            if m.vocab_size != vocab:
                raise ValueError(f"models.{name}.vocab_size = {m.vocab_size} differs from data.tokenizer.vocab_size "
                                 f"= {vocab}; they must be equal (or drop models.{name}.vocab_size to inherit it)")
        seq = self.data.packing.seq_len
        for name, m in self.models.items():
            if seq > m.max_position_embeddings:
                raise ValueError(f"data.packing.seq_len = {seq} exceeds models.{name}.max_position_embeddings = "
                                 f"{m.max_position_embeddings}; lower seq_len or raise max_position_embeddings")
        if self.deploy.variant != "bf16" and self.deploy.variant not in {s.scheme for s in self.quantize.schemes}:
            raise ValueError(f"deploy.variant = {self.deploy.variant!r} is not produced by quantize.schemes "
                             f"({[s.scheme for s in self.quantize.schemes]}); add it there or serve bf16")
        return self

    @property
    def source(self) -> str:
        """Where this recipe came from (a built-in name or a file path, plus overrides)."""
        return self._source

    def redacted_dump(self, **kw: Any) -> dict[str, Any]:
        """``model_dump(mode="json", **kw)`` with secrets (storage options, keys, tokens) shown as ``***``.

        What `herd recipe show` prints and what may be logged anywhere; the secret values are also remembered
        by herd.platform.redact, so they are scrubbed from every MLflow write of this process.
        """
        return redact_config(self.model_dump(mode="json", **kw))

    def section(self, name: str) -> BaseModel | dict[str, ModelConfig]:
        if name not in SECTIONS:
            raise RecipeError(f"unknown recipe section {name!r}; sections are {', '.join(SECTIONS)}")
        return getattr(self, name)


# ----------------------------------------------------------------------------------------------- loading
def builtin_recipes() -> list[str]:
    """Names of the recipes shipped inside the package."""
    root = resources.files("herd.platform") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(ref: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Raw dict of a recipe name or file, with ``base:`` chains merged."""
    if ref in builtin_recipes():
        text = (resources.files("herd.platform") / "recipes" / f"{ref}.yaml").read_text()
        where = f"built-in recipe {ref!r}"
    else:
        path = Path(ref).expanduser()
        if not path.is_file():
            raise RecipeError(f"recipe {ref!r}: no such file and not a built-in recipe; "
                              f"built-ins are {', '.join(builtin_recipes())}")
        text = path.read_text()
        where = f"recipe file {str(path)!r}"
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"{where} is not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"{where} must be a mapping of sections ({', '.join(SECTIONS)}), "
                          f"got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or base in seen:
            raise RecipeError(f"{where}: base = {base!r} must name another recipe (and not loop)")
        raw = deep_merge(_read_yaml(base, (*seen, ref)), raw)
    return raw


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` on top of ``base``; dicts merge key by key, everything else is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``section.key.sub=value`` -> (path, YAML-parsed value). Raises RecipeError on bad syntax."""
    key, sep, value = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts) or len(parts) < 2:
        raise RecipeError(f"bad override {text!r}: expected --set section.key=value "
                          f"(e.g. pretrain.steps=50, models.student.hidden_size=128)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value  # not YAML (e.g. an unquoted ': ' inside): keep the literal string
    return [p.strip() for p in parts], parsed


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, path[: i + 1], text)
                continue
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict | list):
                raise RecipeError(f"bad override {text!r}: {'.'.join(path[: i + 1])} is a value "
                                  f"({nxt!r}), not a section")
            node = nxt
        if isinstance(node, list):
            idx = _index(node, path[-1], path, text)
            node[idx] = value
        else:
            node[path[-1]] = value
    return out


def _index(node: list, part: str, path: list[str], text: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"bad override {text!r}: {'.'.join(path)} needs a list index in [0, {len(node)})")
    return int(part)


def _list_item(node: list, part: str, path: list[str], text: str) -> Any:
    return node[_index(node, part, path, text)]


def load_recipe(ref: str | Path | None = None, overrides: Iterable[str] = ()) -> Recipe:
    """Load, override and validate a recipe (``None`` = the ``tiny`` default). Writes nothing."""
    ref = str(ref) if ref is not None else DEFAULT_RECIPE
    overrides = list(overrides)
    raw = apply_overrides(_read_yaml(ref), overrides)
    recipe = validate_raw(raw, ref)
    # The source is printed and tagged on MLflow runs: a `--set runtime.storage_options.secret=...` keeps its path
    # and loses its value here, once, for every consumer.
    recipe._source = ref + "".join(f" --set {redact_override(o)}" for o in overrides)
    recipe.redacted_dump()  # remember the recipe's secret values, so MLflow writes scrub them wherever they appear
    return recipe


def validate_raw(raw: dict[str, Any], where: str = "recipe") -> Recipe:
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(format_validation_error(e, where)) from None


# ---------------------------------------------------------------------------------------------- errors
class _Container:
    def __init__(self, inner: type[BaseModel]):
        self.inner = inner


def _loc_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for p in loc:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _allowed_keys(loc: tuple[Any, ...]) -> str:
    parent = loc[:-1]
    # walk through dict/list containers (e.g. models.teacher.*, data.sources[0].*)
    model: Any = Recipe
    for part in parent:
        if isinstance(model, _Container):
            model = model.inner
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ""
        field = model.model_fields.get(str(part))
        if field is None:
            return ""
        ann = field.annotation
        args = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif args:
            model = _Container(args[-1]) if getattr(ann, "__origin__", None) in (dict, list) else args[-1]
        else:
            return ""
    if isinstance(model, _Container):
        model = model.inner
    if isinstance(model, type) and issubclass(model, BaseModel):
        return ", ".join(model.model_fields)
    return ""


def format_validation_error(err: ValidationError, where: str = "recipe") -> str:
    """One line: ``<where>: <field path> = <bad value>: <what is allowed>`` (+ how many more errors)."""
    errors = err.errors(include_url=False)
    e = errors[0]
    loc = tuple(e["loc"])
    path = _loc_path(loc)
    msg = str(e["msg"]).removeprefix("Value error, ")
    if e["type"] == "extra_forbidden":
        allowed = _allowed_keys(loc)
        line = f"unknown key {path} (= {_short(e['input'])}); allowed keys here: {allowed or '?'}"
    elif e["type"] == "missing":
        line = f"{path} is required but missing"
    elif not loc or isinstance(e.get("input"), dict):
        # model-level validators report the whole sub-dict as input: their message names the values
        line = f"{path}: {msg}" if path else msg
    else:
        line = f"{path} = {_short(e['input'])}: {msg}"
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"invalid recipe {where}: {line}{more}"


__all__ = [
    "DEFAULT_RECIPE",
    "SECTIONS",
    "Recipe",
    "RecipeError",
    "RuntimeConfig",
    "apply_overrides",
    "builtin_recipes",
    "deep_merge",
    "format_validation_error",
    "load_recipe",
    "parse_override",
]
