"""vLLM's Ray Serve LLM server with herd's stream batching: ``LLMConfig(server_cls=VLLMServer)``.

    from herd.serve.vllm_server import VLLMServer      # imported by herd.serve.vllm_app.llm_config (needs vLLM)

Ray Serve LLM's ``LLMServer`` (vLLM's ``AsyncLLM`` inside, unchanged) whose streamed chunks go through
``herd.serve.streaming.StreamBatcher``: the first chunk at once, later ones batched by the number of live streams,
exactly as herd's own engine server does, so the two engines are served, and measured, on equal terms.
"""

from __future__ import annotations

from typing import Any

from ray.serve.llm.deployment import LLMServer

from herd.serve.streaming import StreamBatching
from herd.serve.vllm_app import replica_runtime_env


class VLLMServer(StreamBatching, LLMServer):
    """``LLMServer`` (vLLM) with load-sized stream batching."""

    @classmethod
    def get_deployment_options(cls, llm_config: Any) -> dict[str, Any]:
        # LLMServer's options (placement group from vLLM's engine config) with herd's replica env
        # (``SERVE_ENV``) and env vars merged key by key: LLMServer lets the model's env_vars replace the job's
        import ray

        opts = super().get_deployment_options(llm_config)
        rao = opts.setdefault("ray_actor_options", {})
        own = llm_config.deployment_config.get("ray_actor_options", {}).get("runtime_env")
        rao["runtime_env"] = replica_runtime_env(ray.get_runtime_context().runtime_env, own,
                                                 rao.get("runtime_env"), llm_config.runtime_env)
        return opts


__all__ = ["VLLMServer"]
