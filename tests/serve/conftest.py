"""Fixtures of the serve tests: a tiny random checkpoint imported into a store, and ``deploy_served`` which deploys
it on the session Ray (``ray_local``) and tears Ray Serve down after the module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port

# On a loaded 2-core box Serve's 5 s proxy readiness check fails and the controller kills the proxy: give it room.
# Read by Serve's controller, which inherits the env of the process that starts Ray (set before ray_local runs).
os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
os.environ.setdefault("RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S", "60")
from tests.serve.api_cases import Served
from tests.serve.tiny import write_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(checkpoint dir in a store, its artifact digest): a random tiny Llama 4 imported as an external model."""
    from herd.platform.modelref import import_checkpoint
    from herd.platform.store import ArtifactStore

    root = tmp_path_factory.mktemp("serve")
    src = write_tiny_model(root / "src")
    art = import_checkpoint(src, ArtifactStore(str(root / "store")))
    return Path(art.local_path()), art.digest


def deploy_served(ray_local, tiny_model: tuple[Path, str], engine: str, *, api_key: str | None = None,
                  app: str = "herdtest", names: tuple[str, ...] = (), shutdown: bool = True,
                  **overrides) -> Iterator[Served]:
    """Deploy the tiny model with ``engine`` as one app (once per name in ``names``: several models in one app);
    yield ``Served`` (its first model); then delete the app, and stop Serve when ``shutdown``."""
    from ray import serve

    from herd.serve.app import ModelSpec, deploy
    from herd.serve.config import DeployConfig

    ckpt, digest = tiny_model
    env = f"HERD_TEST_KEY_{app.upper()}"
    if api_key:
        os.environ[env] = api_key
    cfg = DeployConfig(engine=engine, port=free_port(), app_name=app, max_model_len=512, max_num_seqs=8,
                       api_key_env=env if api_key else None, kv_cache_gib=1, ready_timeout_s=600, **overrides)
    specs = [ModelSpec(id=n, path=str(ckpt), engine=engine, digest=digest, role="external")
             for n in (names or (f"tiny-{engine}",))]
    if not shutdown:  # a second app joins the running Serve instance, on its HTTP port
        from ray.serve.context import _get_global_client

        cfg.port = _get_global_client().http_config.port
        cfg.route_prefix = f"/{app}"
    try:
        ep = deploy(specs, cfg, log=print)
        yield Served(url=ep.url, model=specs[0].id, ckpt=ckpt, api_key=api_key, engine=engine, digest=digest)
    finally:
        if shutdown:
            serve.shutdown()  # frees the replicas' CPUs for the next module (and Serve's HTTP port)
        else:
            serve.delete(app)
        os.environ.pop(env, None)
