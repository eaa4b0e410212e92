"""Model references: one way for every command and flow to name a model, and to learn its role.

A reference is any of

    3f9a0c1d...          an artifact digest, or a unique prefix of >= 8 characters (``herd lineage`` shows them)
    m-0123abcd...        an MLflow LoggedModel id (its ``herd.digest`` tag names the artifact)
    ./my-checkpoint      a local Hugging Face checkpoint directory (written by herd's ``save_hf`` or by
                         transformers' ``save_pretrained``): imported into the store as an ``external`` model,
                         so its evaluation metrics and lineage have a home

and resolves to a ``ModelRef``: the committed model artifact, its role (``herd.platform.roles``) and the step
and output that made it. Used by ``herd eval MODEL``, ``herd serve MODEL``, the quantize gate and the UI.

    from herd.platform.modelref import resolve_model
    ref = resolve_model("m-1a2b...", store, tracking_uri=rt.tracking_uri)
    ref.artifact.local_path(), ref.role, ref.label            # ..., "student", "student [3f9a0c1d9e2b]"

The role comes from the artifact itself (``meta.role`` in its manifest, written for imports), else from the
step that made it (``Step.roles`` of the registered flows: ``pretrain.train.model`` -> ``teacher``), else from
the LoggedModel's ``herd.role`` tag. ``models:/NAME@ALIAS`` (Model Registry) references are handled by
``resolve_registry`` hooks registered in ``REGISTRY_RESOLVERS`` (the MLflow UI/registry issue adds one).
Writes to MLflow happen in the caller (the driver), never here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.platform.errors import StoreError
from herd.platform.roles import STAGE_ORDER, check_role
from herd.platform.store import Artifact, ArtifactStore

if TYPE_CHECKING:
    from herd.platform.config import Recipe

IMPORT_STEP = "import"  # producer_step of models imported from outside herd
HF_FORMAT = "hf-safetensors"
# Files of a checkpoint directory that belong to the model; everything else (optimizer state, logs) is left out.
_MODEL_SUFFIXES = (".safetensors", ".json", ".jinja", ".model", ".txt")

# ``models:/NAME@ALIAS`` and similar schemes: prefix -> fn(ref, store, tracking_uri) -> artifact digest.
REGISTRY_RESOLVERS: dict[str, Callable[[str, ArtifactStore, str | None], str]] = {}


class ModelRefError(ValueError):
    """A reference that names no model, with what was tried and what to pass instead."""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: the committed artifact and what it is."""

    artifact: Artifact
    role: str
    step: str | None = None  # the step that made it (``distill.train``), None for imports
    output: str | None = None  # the step's output name (``model``)
    model_id: str | None = None  # its MLflow LoggedModel, when known
    source: str = ""  # the reference as the user gave it
    parents: list[str] = field(default_factory=list)  # parent artifact digests (its inputs)

    @property
    def digest(self) -> str:
        return self.artifact.digest

    @property
    def label(self) -> str:
        return f"{self.role} [{self.digest[:12]}]"


# --------------------------------------------------------------------------------------------- roles
def step_roles(recipe: Recipe | None = None) -> dict[str, str]:
    """``"<step>.<output>" -> role`` for every model output the registered flows declare a role for."""
    from herd.flows import FLOWS, builder
    from herd.platform.config import Recipe

    recipe = recipe or Recipe()
    out: dict[str, str] = {}
    for name in FLOWS:
        for step in builder(name)(recipe):
            for output, role in step.roles.items():
                out[f"{step.name}.{output}"] = role
    return out


def role_of(artifact: Artifact, roles: dict[str, str] | None = None) -> str | None:
    """The role recorded for ``artifact``: ``meta.role``, else its producing step's declared role."""
    meta_role = artifact.manifest.meta.get("role")
    if meta_role:
        return check_role(str(meta_role))
    step, output = artifact.manifest.producer_step, artifact.manifest.meta.get("output")
    if step and output:
        return (roles if roles is not None else step_roles()).get(f"{step}.{output}")
    return None


def stage_rank(role: str) -> int:
    """Position of ``role`` in the pipeline (teacher 0, student 1, ...): sorts models by stage."""
    return STAGE_ORDER.index(role) if role in STAGE_ORDER else len(STAGE_ORDER)


# --------------------------------------------------------------------------------------------- import
def is_checkpoint_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / "config.json").is_file()


def import_checkpoint(path: str | os.PathLike, store: ArtifactStore, *, validate: bool = True) -> Artifact:
    """Commit a local HF checkpoint directory to the store as an ``external`` model artifact.

    Only the model's files are copied (weights, configs, tokenizer). ``validate`` loads it with
    ``herd.model.load_hf`` first, so a directory herd cannot run fails here with the reason, not later.
    Importing the same files twice gives the same artifact (content addressed).
    """
    src = Path(path).expanduser().resolve()
    if not is_checkpoint_dir(src):
        raise ModelRefError(f"{path} is not a checkpoint directory (no config.json); pass a directory written "
                            "by herd or by transformers' save_pretrained")
    if not any(src.glob("*.safetensors")):
        raise ModelRefError(f"{src} has no *.safetensors weights; save it with safe_serialization (the default)")
    if validate:
        from herd.model.hf import CheckpointError, load_hf

        try:
            load_hf(src)  # a full load checks keys and shapes against config.json
        except CheckpointError as e:
            raise ModelRefError(f"cannot import {src}: {e}") from e
    with tempfile.TemporaryDirectory(prefix="herd-import-") as tmp:
        stage = Path(tmp) / "model"
        stage.mkdir()
        for f in sorted(src.iterdir()):
            if f.is_file() and f.suffix in _MODEL_SUFFIXES:
                shutil.copyfile(f, stage / f.name)
        return store.put_dir(stage, kind="model", format=HF_FORMAT, producer_step=IMPORT_STEP,
                             meta={"output": "model", "role": "external", "imported_from": str(src)})


# --------------------------------------------------------------------------------------------- resolve
def _model_tags(tracking_uri: str, model_id: str) -> dict[str, str]:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        return dict(MlflowClient(tracking_uri).get_logged_model(model_id).tags)
    except MlflowException as e:
        raise ModelRefError(f"{model_id} is not a LoggedModel in MLflow at {tracking_uri}: {e.message}") from None


def resolve_model(ref: str, store: ArtifactStore, *, tracking_uri: str | None = None,
                  recipe: Recipe | None = None, import_dirs: bool = True) -> ModelRef:
    """Resolve a model reference (digest or prefix, ``m-...`` id, HF checkpoint dir) to a ``ModelRef``.

    ``tracking_uri`` is needed for ``m-...`` ids. A directory is imported into ``store`` (``import_dirs``);
    its role is ``external``. Raises ``ModelRefError`` naming what was tried.
    """
    ref = str(ref).strip()
    if not ref:
        raise ModelRefError("empty model reference; pass an artifact digest, an m-... model id or a checkpoint dir")
    model_id: str | None = None
    tags: dict[str, str] = {}
    if ref.startswith("models:/"):
        import herd.platform.registry  # noqa: F401 -- registers the models:/NAME@ALIAS resolver
    scheme = next((p for p in REGISTRY_RESOLVERS if ref.startswith(p)), None)
    if scheme is not None:
        digest = REGISTRY_RESOLVERS[scheme](ref, store, tracking_uri)
    elif ref.startswith("m-") and not Path(ref).exists():
        if tracking_uri is None:
            raise ModelRefError(f"{ref} is an MLflow model id; resolving it needs the tracking URI")
        tags = _model_tags(tracking_uri, ref)
        if "herd.digest" not in tags:
            raise ModelRefError(f"LoggedModel {ref} has no herd.digest tag: it was not logged by herd")
        model_id, digest = ref, tags["herd.digest"]
    elif Path(ref).expanduser().is_dir():
        if not import_dirs:
            raise ModelRefError(f"{ref} is a directory; importing checkpoints is disabled here")
        digest = import_checkpoint(ref, store).digest
    else:
        if len(ref) < 8 or any(c not in "0123456789abcdef" for c in ref):
            raise ModelRefError(f"{ref!r} is not a model reference: pass an artifact digest (>= 8 hex chars), "
                                "an m-... MLflow model id, or a local checkpoint directory")
        try:
            digest = store.resolve_prefix(ref)
        except StoreError as e:
            raise ModelRefError(f"{ref!r}: {e}") from None
    try:
        art = store.get(digest)
    except StoreError as e:
        raise ModelRefError(f"{ref!r} names artifact {digest[:12]}, which is not in the store {store.root}: "
                            f"{e}") from None
    if art.kind != "model":
        raise ModelRefError(f"{ref!r} is a {art.kind} artifact ({art.manifest.producer_step}), not a model")
    roles = step_roles(recipe)
    role = role_of(art, roles) or tags.get("herd.role") or "external"
    return ModelRef(artifact=art, role=check_role(role), step=art.manifest.producer_step,
                    output=art.manifest.meta.get("output"), model_id=model_id, source=ref,
                    parents=list(art.manifest.parents))


def describe(ref: ModelRef) -> dict[str, Any]:
    """A JSON-able summary (for ``--format json`` and reports)."""
    return {"digest": ref.digest, "role": ref.role, "step": ref.step, "output": ref.output,
            "model_id": ref.model_id, "uri": ref.artifact.uri, "source": ref.source}


__all__ = ["HF_FORMAT", "IMPORT_STEP", "REGISTRY_RESOLVERS", "ModelRef", "ModelRefError", "describe",
           "import_checkpoint", "is_checkpoint_dir", "resolve_model", "role_of", "stage_rank", "step_roles"]
