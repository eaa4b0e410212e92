"""herd.serve.engine: continuous batching over herd's Llama 4, the in-process generator of serving, evaluation
and RL rollouts.

Construct (a herd HF checkpoint dir with its tokenizer.json, or a model + tokenizers.Tokenizer in memory):

    from herd.serve.engine import Engine, EngineConfig, SamplingParams
    engine = Engine.from_pretrained(ckpt_dir, EngineConfig(max_num_seqs=32, max_model_len=1024))
    engine = Engine(model, tokenizer, EngineConfig(...))      # model: herd.model.Llama4 (quantized Linears ok)

Sync batch face (evaluation, RL): blocks until every prompt is done, continuously batched.

    outs = engine.generate_batch([[0, 17, 42], [0, 5]], SamplingParams(max_tokens=32, temperature=0.7, seed=1))
    outs[0].token_ids, outs[0].text, outs[0].finish_reason, outs[0].stop_reason, outs[0].logprobs, outs[0].usage
    scores = engine.score([[0, 17, 42, 7]])                  # teacher-forced per-token logprobs, first None
    scores[0].token_logprobs, scores[0].is_greedy, scores[0].loglikelihood(start=2)

Async face (serving): a background step loop thread; iterate deltas; breaking out (a client disconnect
cancels the task) aborts the request and frees its slot.

    async for delta in engine.generate(prompt_ids, SamplingParams(stop=["\\n"], logprobs=1), request_id="r1"):
        delta.token_ids, delta.text, delta.logprobs, delta.top_logprobs   # new since the last delta
        delta.finished, delta.finish_reason, delta.num_output_tokens     # the last delta: "stop" | "length" | "abort"
    engine.abort("r1")                                       # thread-safe
    engine.check_request(prompt_ids, params)                 # raise the 400-type error up front
    engine.shutdown()

Echo + logprobs (lm-eval loglikelihood): ``SamplingParams(max_tokens=1, prompt_logprobs=1, logprobs=1)``; the
first delta carries ``prompt_logprobs`` (first None) and ``prompt_top_logprobs``.

Errors: ``EngineRequestError`` (bad request, ``.param`` names the field: a 400), ``PromptTooLongError`` (its
subclass: prompt + max_tokens over ``max_model_len``), ``EngineOverloadedError`` (queue full: 503/429),
``EngineDeadError`` (the step loop failed: 500).

Design: ``kv.py`` (slot pool + packed-step attention), ``scheduler.py`` (budgeted mixed prefill/decode steps),
``sampling.py`` (per-row sampling, logprobs), ``text.py`` (incremental detokenizer, stop strings), ``core.py``
(one step), ``engine.py`` (the two faces). Benchmark: ``python benchmarks/engine_throughput.py``.
"""

from __future__ import annotations

from herd.serve.engine.config import EngineConfig
from herd.serve.engine.engine import Engine, generate_once
from herd.serve.engine.types import (
    Completion,
    EngineDeadError,
    EngineError,
    EngineOverloadedError,
    EngineRequestError,
    PromptTooLongError,
    RequestOutput,
    SamplingParams,
    ScoreOutput,
)

__all__ = [
    "Completion",
    "Engine",
    "EngineConfig",
    "EngineDeadError",
    "EngineError",
    "EngineOverloadedError",
    "EngineRequestError",
    "PromptTooLongError",
    "RequestOutput",
    "SamplingParams",
    "ScoreOutput",
    "generate_once",
]
