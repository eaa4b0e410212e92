"""vLLM's Ray Serve LLM server with herd's stream batching: ``LLMConfig(server_cls=VLLMServer)``.

    from herd.serve.vllm_server import VLLMServer      # imported by herd.serve.vllm_app.llm_config (needs vLLM)

Ray Serve LLM's ``LLMServer`` (vLLM's ``AsyncLLM`` inside, unchanged) whose streamed chunks go through
``herd.serve.streaming.StreamBatcher``: the first chunk at once, later ones batched by the number of live streams,
exactly as herd's own engine server does, so the two engines are served, and measured, on equal terms.
"""

from __future__ import annotations

from ray.serve.llm.deployment import LLMServer

from herd.serve.streaming import StreamBatching


class VLLMServer(StreamBatching, LLMServer):
    """``LLMServer`` (vLLM) with load-sized stream batching."""


__all__ = ["VLLMServer"]
