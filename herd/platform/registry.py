"""herd's models in the MLflow Model Registry: one registered model per role, a version per distinct digest.

    register_model(client, model_id, "tiny-student", digest, run_id)   # -> version; alias "newest" moves to it
    resolve_registered(tracking_uri, "models:/tiny-student@newest")    # -> RegisteredRef(model_id, digest, uri)

A registered model is named by ``herd.platform.roles.model_name`` (``<recipe>-<role>``), the same name the
LoggedModel carries and the CLI prints. Registering the same weights again (same digest, e.g. a re-run that
reproduced them, or a re-recorded lineage after ``--tracking-uri`` changed) reuses the version it already has.
``@latest`` (reserved by MLflow for "the highest version") also resolves. MLflow OSS leaves
``ModelVersion.model_id`` empty: the link to the LoggedModel is the version's ``herd.model_id`` tag (and its
source, the LoggedModel's artifact location).
"""

from __future__ import annotations

from dataclasses import dataclass

from herd.platform.errors import LineageError

ALIAS = "newest"  # "latest" is reserved by MLflow (it means the highest version number)


def register_model(client, model_id: str, name: str, digest: str, run_id: str | None,
                   description: str = "") -> str:
    """Register LoggedModel ``model_id`` as a version of ``name`` (one version per digest); alias ``newest``."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(name, tags={"herd.role_model": "true"}, description=description)
        except MlflowException:  # created concurrently
            client.get_registered_model(name)
    for mv in client.search_model_versions(f"name = '{name}'"):
        if mv.tags.get("herd.digest") == digest:
            version = mv.version
            old = mv.tags.get("herd.model_id")
            if old != model_id and not _exists(client, old):  # its LoggedModel was an unfinished attempt, deleted
                client.set_model_version_tag(name, version, "herd.model_id", model_id)
            break
    else:
        # Source = the LoggedModel's artifact location, not "models:/m-...": for that form MLflow's sqlite
        # registry looks the model up through a fresh MlflowClient() on the *global* tracking URI (a stray
        # ./mlflow.db in the current directory), not this client's store.
        model = client.get_logged_model(model_id)
        mv = client.create_model_version(name, model.artifact_location, run_id=run_id or model.source_run_id,
                                         tags={"herd.digest": digest, "herd.model_id": model_id})
        version = mv.version
        # what mlflow.register_model does for a LoggedModel: its page lists the versions made from it
        import json

        have = json.loads(model.tags.get("mlflow.modelVersions", "[]"))
        client.set_logged_model_tags(model_id, {"mlflow.modelVersions": json.dumps(
            [*have, {"name": name, "version": str(version)}])})
    client.set_registered_model_alias(name, ALIAS, version)
    return str(version)


def _exists(client, model_id: str | None) -> bool:
    from mlflow.exceptions import MlflowException

    if not model_id:
        return False
    try:
        client.get_logged_model(model_id)
        return True
    except MlflowException:
        return False


@dataclass(frozen=True)
class RegisteredRef:
    name: str
    version: str
    model_id: str
    digest: str
    uri: str | None


def parse_models_uri(ref: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` -> (NAME, ALIAS, None); ``models:/NAME/3`` -> (NAME, None, "3")."""
    if not ref.startswith("models:/"):
        raise LineageError(f"{ref!r} is not a registry reference; use models:/NAME@ALIAS or models:/NAME/VERSION")
    body = ref[len("models:/"):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        return name, alias, None
    if "/" in body:
        name, version = body.rsplit("/", 1)
        return name, None, version
    raise LineageError(f"{ref!r} names no version or alias; use models:/{body}@{ALIAS} or models:/{body}/1")


def resolve_registered(tracking_uri: str, ref: str) -> RegisteredRef:
    """The herd artifact behind ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_models_uri(ref)
    client = MlflowClient(tracking_uri)
    try:
        if alias is not None and alias.lower() == "latest":
            versions = client.search_model_versions(f"name = '{name}'")
            if not versions:
                raise LineageError(f"registered model {name!r} has no versions at {tracking_uri}")
            mv = max(versions, key=lambda v: int(v.version))
        elif alias is not None:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, version)
    except MlflowException as e:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise LineageError(f"{ref}: not in the Model Registry at {tracking_uri} ({e.message.splitlines()[0]}); "
                           f"registered models: {known}") from None
    model_id = mv.tags.get("herd.model_id")
    if not model_id:
        raise LineageError(f"{ref}: version {mv.version} was not registered by herd (no herd.model_id tag)")
    model = client.get_logged_model(model_id)
    digest = mv.tags.get("herd.digest") or model.tags.get("herd.digest")
    if not digest:
        raise LineageError(f"{ref}: version {mv.version} was not registered by herd (no herd.digest tag)")
    return RegisteredRef(name, str(mv.version), model_id, digest, model.tags.get("herd.uri"))


def _digest_for_modelref(ref: str, store, tracking_uri: str | None) -> str:
    """The ``models:/`` hook of ``herd.platform.modelref.resolve_model`` (``herd serve models:/NAME@ALIAS``)."""
    from herd.platform.modelref import ModelRefError

    if tracking_uri is None:
        raise ModelRefError(f"{ref} is a Model Registry reference; resolving it needs the tracking URI")
    try:
        return resolve_registered(tracking_uri, ref).digest
    except LineageError as e:
        raise ModelRefError(str(e)) from None


def _register_hook() -> None:
    from herd.platform.modelref import REGISTRY_RESOLVERS

    REGISTRY_RESOLVERS.setdefault("models:/", _digest_for_modelref)


_register_hook()

__all__ = ["ALIAS", "RegisteredRef", "parse_models_uri", "register_model", "resolve_registered"]
