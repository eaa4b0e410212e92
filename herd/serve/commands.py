"""The ``herd serve`` and ``herd status`` commands (``herd.cli`` registers them; library code, no typer here).

    herd serve MODEL [MODEL ...] [--engine vllm|herd|auto] [--port 8000] [--api-key-env HERD_API_KEY]
    herd status

``serve`` resolves each MODEL (artifact digest or prefix, MLflow ``m-...`` id, or a local HF checkpoint
directory, imported as an ``external`` model) with ``herd.platform.modelref``, deploys them in one application on
the persistent local Ray (started as ``herd up`` does when none runs), returns once the endpoint answers and
prints the URL with ready-to-paste curl and openai examples. ``status`` lists HERD_HOME's endpoints and whether
each answers (plain HTTP: it does not join the cluster).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from herd.serve.app import Endpoint, ModelSpec, deploy, health, recorded, resolve_engine
from herd.serve.config import DeployConfig


def serve_models(refs: list[str], recipe: Any, deploy_cfg: DeployConfig, *, address: str | None = None,
                 say: Callable[[str], None] = print) -> Endpoint:
    """Deploy the models named by ``refs`` on the persistent cluster of ``recipe.runtime``; returns the endpoint."""
    from herd.platform.modelref import resolve_model
    from herd.platform.runtime import Runtime

    rt = Runtime(recipe.runtime, address=address)
    rt.ensure_persistent(on_event=say)
    try:
        rt.start()
        store = rt.artifact_store()
        specs: list[ModelSpec] = []
        for i, ref in enumerate(refs):
            m = resolve_model(ref, store, tracking_uri=rt.tracking_uri, recipe=recipe)
            path = str(m.artifact.local_path())
            name = (deploy_cfg.served_model_name if deploy_cfg.served_model_name and len(refs) == 1
                    else f"herd-{m.role}" if sum(1 for r in refs) == 1 else f"herd-{m.role}-{m.digest[:8]}")
            specs.append(ModelSpec(id=name, path=path, engine=resolve_engine(path, deploy_cfg), digest=m.digest,
                                   mlflow_model_id=m.model_id, role=m.role))
            say(f"model {i + 1}: {m.label} from {ref} -> {name!r} on {specs[-1].engine}")
        return deploy(specs, deploy_cfg, home=rt.home, log=say)
    finally:
        rt.stop()  # detaches; the persistent head (and the endpoint) keep running


def examples(ep: Endpoint) -> str:
    """Ready-to-paste curl and openai snippets for ``ep``."""
    model = ep.models[0]["id"]
    key_env = ep.api_key_env
    auth = f' -H "Authorization: Bearer ${key_env}"' if key_env else ""
    key = f'os.environ["{key_env}"]' if key_env else '"none"'
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 32})
    lines = [
        f"curl {ep.url}/models{auth}",
        f"curl {ep.url}/chat/completions -H 'Content-Type: application/json'{auth} -d '{body}'",
        "",
        "python - <<'PY'",
        *(["import os"] if key_env else []),
        "from openai import OpenAI",
        f'client = OpenAI(base_url="{ep.url}", api_key={key})',
        (f'r = client.chat.completions.create(model="{model}", max_tokens=32, '
         'messages=[{"role": "user", "content": "Hello"}])'),
        "print(r.choices[0].message.content)",
        "PY",
    ]
    return "\n".join(lines)


def status_rows(home: Any) -> list[dict[str, Any]]:
    """One row per recorded endpoint: app, url, models (id, role, engine, digest), up (answers /health)."""
    rows = []
    for name, ep in recorded(home).items():
        live = health(ep.url)
        rows.append({"app": name, "url": ep.url, "up": live is not None,
                     "models": [{k: m.get(k) for k in ("id", "role", "engine", "digest")} for m in ep.models],
                     "api_key": bool(ep.api_key_env)})
    return rows


__all__ = ["examples", "serve_models", "status_rows"]
