"""herd's OpenAI-compatible serving on Ray Serve: vLLM through Ray Serve LLM and herd's own engine behind one
ingress (API key, lineage, OpenAI error shapes, guards, tokenizer routes).

    herd serve MODEL          # deploy a digest / MLflow model id / HF dir; prints URL, curl and openai examples
    herd status               # endpoints running on the persistent cluster
    herd down                 # stop them (and the cluster)

Modules: ``config`` (the recipe's deploy section), ``errors`` (OpenAI error JSON), ``ingress`` (the shared
FastAPI ingress), ``vllm_app`` (Ray Serve LLM configs), ``herd_server`` (herd's engine as a Ray Serve LLM server
class), ``vllm_server`` (vLLM's server class with herd's stream batching), ``streaming`` (streamed chunks batched
into Ray messages by load), ``app`` (build, deploy, wait, status, stop). Importing this package imports neither Ray
nor vLLM.
"""
