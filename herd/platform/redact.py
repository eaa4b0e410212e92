"""Secrets never leave the process in clear: redaction for recipes, ``--set`` overrides and MLflow writes.

Three layers, each shown as ``***``:

- by place: every value under a ``storage_options`` mapping (fsspec credentials: ``key``, ``secret``, ``token``,
  ``client_kwargs.aws_secret_access_key``, ...) except a short list of harmless settings (``endpoint_url``,
  ``region_name``, ``anon``, ...), and every value whose key names a secret (``secret``, ``password``,
  ``token``, ``api_key``, ``*_secret``, ``*_token``, ...);
- by override: ``--set runtime.storage_options.secret=...`` (or a whole ``storage_options={...}``) keeps its
  path and loses its value, so a recipe's ``source`` string is safe to print and to tag;
- by value: the values redacted above, and secret environment variables (``AWS_SECRET_ACCESS_KEY``,
  ``*_API_KEY``, ``*_TOKEN``, ...; at least 8 characters), are remembered, and ``scrub`` replaces them wherever
  they appear, e.g. inside an error traceback tagged on a failed run. ``scrubbing_client`` is an
  ``MlflowClient`` that scrubs every tag, param and text artifact it writes.

    from herd.platform.redact import redact_config, redact_override, scrub
    yaml.safe_dump(redact_config(recipe.model_dump(mode="json")))
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

REDACTED = "***"
MIN_SCRUB_LEN = 8  # shorter values (moto's "testing", "true") would mangle ordinary text

# fsspec / s3fs settings that are not credentials; everything else under storage_options is.
SAFE_STORAGE_KEYS = frozenset({
    "endpoint_url", "region_name", "region", "anon", "use_ssl", "verify", "requester_pays", "default_block_size",
    "default_fill_cache", "default_cache_type", "version_aware", "use_listings_cache", "listings_expiry_time",
    "max_paths", "skip_instance_cache", "client_kwargs", "config_kwargs", "s3_additional_kwargs",
    "signature_version", "addressing_style", "connect_timeout", "read_timeout", "retries", "max_attempts",
    "cache_regions", "asynchronous", "loop", "project", "account_name", "auto_mkdir",
})
_SECRET_NAMES = frozenset({
    "key", "secret", "token", "password", "passwd", "credentials", "credential", "api_key", "apikey",
    "authorization", "auth", "private_key", "client_secret", "access_key", "access_key_id", "secret_key",
    "secret_access_key", "session_token", "security_token", "sas_token", "account_key", "connection_string",
})
_SECRET_SUFFIXES = ("_secret", "_password", "_passwd", "_token", "_api_key", "_apikey", "_secret_key",
                    "_access_key", "_access_key_id", "_private_key", "_credentials")
_ENV_SECRET = re.compile(r"(SECRET|PASSWORD|PASSWD|_TOKEN$|^TOKEN$|API_KEY|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)")
_NOT_SECRET_ENV = frozenset({"RAY_AUTH_TOKEN_PATH"})  # a path, not a secret

_known: set[str] = set()  # secret values met in recipes this process loaded


def is_secret_key(key: Any) -> bool:
    """Does a config key (the last part of a dotted path) name a credential?"""
    k = str(key).rsplit(".", 1)[-1].lower().replace("-", "_")
    return k in _SECRET_NAMES or k.endswith(_SECRET_SUFFIXES)


def remember(value: Any) -> None:
    """Scrub this value from everything written from now on (strings of at least MIN_SCRUB_LEN characters)."""
    if isinstance(value, str) and len(value) >= MIN_SCRUB_LEN:
        _known.add(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            remember(v)
    elif isinstance(value, list | tuple):
        for v in value:
            remember(v)


def _redact_storage(options: Any) -> Any:
    if not isinstance(options, Mapping):
        remember(options)
        return REDACTED if options not in (None, "", {}, []) else options
    out = {}
    for k, v in options.items():
        if str(k) in ("client_kwargs", "config_kwargs", "s3_additional_kwargs") and isinstance(v, Mapping):
            out[k] = _redact_storage(v)
        elif str(k) in SAFE_STORAGE_KEYS and not is_secret_key(k):
            out[k] = v
        else:
            remember(v)
            out[k] = REDACTED if v not in (None, "", {}, []) else v
    return out


def redact_config(data: Any) -> Any:
    """A copy of a dumped config (dicts, lists, scalars) with its secrets replaced by ``***`` (and remembered)."""
    if isinstance(data, Mapping):
        out = {}
        for k, v in data.items():
            if str(k) == "storage_options":
                out[k] = _redact_storage(v)
            elif is_secret_key(k) and not _plain_value(v) and v not in ({}, []):
                remember(v)
                out[k] = REDACTED
            else:
                out[k] = redact_config(v)
        return out
    if isinstance(data, list | tuple):
        return [redact_config(v) for v in data]
    return data


def redact_override(text: str) -> str:
    """``section.key=value`` with the value hidden when the path is a secret or inside storage_options."""
    key, sep, value = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not sep:
        return text
    if "storage_options" in parts:
        below = parts[parts.index("storage_options") + 1:]
        if not below or not (below[-1] in SAFE_STORAGE_KEYS and not is_secret_key(below[-1])) \
                or below[-1] in ("client_kwargs", "config_kwargs"):
            remember(value.strip())
            return f"{key}={REDACTED}"
    if any(is_secret_key(p) for p in parts):
        remember(value.strip())
        return f"{key}={REDACTED}"
    return text


def env_secrets() -> list[str]:
    """Values of secret-looking environment variables (AWS keys, API keys, tokens) worth scrubbing."""
    return [v for k, v in os.environ.items()
            if k not in _NOT_SECRET_ENV and _ENV_SECRET.search(k.upper()) and len(v) >= MIN_SCRUB_LEN]


def scrub(value: Any) -> Any:
    """``value`` (a string; anything else is returned as is) with every known secret value replaced."""
    if not isinstance(value, str) or not value:
        return value
    for secret in sorted({*_known, *env_secrets()}, key=len, reverse=True):
        if secret in value:
            value = value.replace(secret, REDACTED)
    return value


def _plain_value(v: Any) -> bool:
    """A flag or a number (``distill.alpha.per_token = True``): not a credential whatever its key says."""
    if v is None or isinstance(v, bool | int | float):
        return True
    text = str(v).strip().lower()
    return text in ("", "true", "false", "none", "null") or text.lstrip("-").replace(".", "", 1).isdigit()


def scrub_mapping(items: Mapping[str, Any]) -> dict[str, Any]:
    """Tags or params: secret-named keys lose their value, every value is scrubbed."""
    return {k: (REDACTED if is_secret_key(k) and not _plain_value(v) else scrub(v)) for k, v in items.items()}


def scrubbing_client(tracking_uri: str) -> Any:
    """An ``MlflowClient`` whose tag, param and text-artifact writes go through ``scrub`` (the last line of
    defence: whatever a step, a traceback or a recipe carries, no known secret reaches the tracking store)."""
    from mlflow import MlflowClient

    return _client_class(MlflowClient)(tracking_uri)


_CLASS: dict[type, type] = {}


def _client_class(base: type) -> type:
    if base in _CLASS:
        return _CLASS[base]
    from mlflow.entities import Param, RunTag

    class ScrubbingClient(base):  # type: ignore[misc, valid-type]
        def create_run(self, experiment_id, start_time=None, tags=None, run_name=None):
            return super().create_run(experiment_id, start_time, scrub_mapping(tags or {}) or None, run_name)

        def set_tag(self, run_id, key, value, synchronous=None):
            return super().set_tag(run_id, key, scrub_mapping({key: value})[key], synchronous=synchronous)

        def log_param(self, run_id, key, value, synchronous=None):
            return super().log_param(run_id, key, scrub_mapping({key: value})[key], synchronous=synchronous)

        def log_batch(self, run_id, metrics=(), params=(), tags=(), synchronous=None):
            params = [Param(p.key, str(scrub_mapping({p.key: p.value})[p.key])) for p in params or ()]
            tags = [RunTag(t.key, str(scrub_mapping({t.key: t.value})[t.key])) for t in tags or ()]
            return super().log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=synchronous)

        def log_text(self, run_id, text, artifact_file):
            return super().log_text(run_id, scrub(text), artifact_file)

        def set_logged_model_tags(self, model_id, tags):
            return super().set_logged_model_tags(model_id, scrub_mapping(tags))

        def create_logged_model(self, experiment_id, name=None, source_run_id=None, tags=None, params=None,
                                model_type=None):
            return super().create_logged_model(experiment_id, name=name, source_run_id=source_run_id,
                                               tags=scrub_mapping(tags) if tags else tags,
                                               params=scrub_mapping(params) if params else params,
                                               model_type=model_type)

    _CLASS[base] = ScrubbingClient
    return ScrubbingClient


__all__ = ["REDACTED", "SAFE_STORAGE_KEYS", "env_secrets", "is_secret_key", "redact_config", "redact_override",
           "remember", "scrub", "scrub_mapping", "scrubbing_client"]
