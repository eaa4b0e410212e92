"""herd's continuous-batching engine (``herd.serve.engine``) as a Ray Serve LLM server class.

    from herd.serve.herd_server import llm_config
    cfg = llm_config(spec, deploy)        # LLMConfig(server_cls=HerdServer): behind the same HerdIngress as vLLM

``HerdServer`` is Ray Serve LLM's ``LLMServer`` with ``HerdEngine`` as its engine (the ``LLMEngine`` protocol:
``chat``/``completions`` yield vLLM's OpenAI response objects, SSE strings when streaming, or an
``ErrorResponse``), so Ray's stream batching, request ids and health checks are shared with the vLLM path.
It places no placement group: one replica actor with ``deploy.num_cpus`` CPUs holds the engine.

Request mapping (OpenAI -> ``SamplingParams``): temperature (default 1), top_p, top_k, seed, max_tokens
(``max_completion_tokens`` for chat), stop strings, stop_token_ids, ignore_eos, logprobs (completions: top-k
int; chat: bool + top_logprobs), echo (prompt logprobs, first None), ``stream_options.include_usage``.
A client disconnect cancels the request's task, which aborts it in the engine and frees its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

# The one private import: Ray 2.60 publishes ``LLMServer`` (whose ``server_cls`` hook this module fills) but not
# the ``LLMEngine`` protocol its engine must implement; ``ray.serve.llm`` has no public name for it.
from ray.llm._internal.serve.core.engine.protocol import LLMEngine
from ray.serve.llm.deployment import LLMServer
from ray.serve.llm.openai_api_models import ChatCompletionResponse, CompletionResponse, ErrorResponse

from herd.serve.config import DeployConfig
from herd.serve.streaming import StreamBatching

if TYPE_CHECKING:
    from herd.serve.app import ModelSpec


def llm_config(spec: ModelSpec, deploy: DeployConfig) -> Any:
    """The Ray Serve LLM config of one model served by herd's engine."""
    from ray.serve.llm import LLMConfig

    from herd.serve.vllm_app import deployment_config

    dep = deployment_config(deploy)
    dep["ray_actor_options"] = {"num_cpus": deploy.num_cpus}  # no placement group: the actor holds the CPUs
    return LLMConfig(
        model_loading_config={"model_id": spec.id, "model_source": str(spec.path)},
        engine_kwargs={"max_num_seqs": deploy.max_num_seqs, "max_model_len": deploy.max_model_len,
                       "max_num_batched_tokens": max(512, deploy.max_num_seqs),
                       "max_waiting": deploy.limits.max_queued_requests,
                       "dtype": deploy.dtype, "num_threads": max(1, int(deploy.num_cpus) or 1)},
        accelerator_config={"kind": "cpu"},
        deployment_config=dep,
        server_cls=HerdServer,
        log_engine_metrics=False,
    )


def _load_engine(path: str, cfg: Any, dtype: Any) -> Any:
    """herd's engine over the checkpoint at ``path``: a compressed-tensors export (``quantization_config``) runs on
    herd.quantize's packed CPU kernels (what vLLM's CPU build cannot serve), anything else loads dense."""
    from tokenizers import Tokenizer

    from herd.quantize.modules import load_for_inference
    from herd.serve.engine import Engine

    # dtype None (deploy.dtype auto): a dense checkpoint keeps its dtype, a quantized one computes in fp32
    model = load_for_inference(path, dtype=dtype)
    return Engine(model, Tokenizer.from_file(str(Path(path) / "tokenizer.json")), cfg)


def _error(message: str, status: int = 400, param: str | None = None, type_: str = "BadRequestError") -> Any:
    return ErrorResponse(error={"message": message, "type": type_, "code": status, "param": param})


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class HerdEngine(LLMEngine):
    """``LLMEngine`` over ``herd.serve.engine.Engine`` (one per replica)."""

    def __init__(self, llm_config: Any):
        super().__init__(llm_config)
        self.llm_config = llm_config
        self.engine: Any = None
        self.model_id = llm_config.model_id
        # the server's stream interval (seconds): each stream sends one merged delta per interval (HerdServer sets
        # it to its batcher's, which grows with the number of live streams); None: one delta per token
        self.pace: Callable[[], float] | None = None

    async def start(self) -> None:
        import torch

        from herd.serve.engine import EngineConfig

        kw = dict(self.llm_config.engine_kwargs)
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}.get(
            str(kw.pop("dtype", "float32")))
        path = str(self.llm_config.model_loading_config.model_source)
        cfg = EngineConfig(**{k: v for k, v in kw.items() if k in EngineConfig.model_fields})
        self.engine = await asyncio.to_thread(_load_engine, path, cfg, dtype)
        self.engine.start()
        self._vocab = self.engine.tokenizer.get_vocab_size()

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("herd engine is not started yet")
        if self.engine.error is not None:
            raise RuntimeError(f"herd engine's step loop stopped: {self.engine.error!r}")

    async def shutdown(self) -> None:
        if self.engine is not None:
            await asyncio.to_thread(self.engine.shutdown)

    async def resolve_lora(self, lora_model: Any) -> None:
        raise NotImplementedError("herd's engine serves no LoRA adapters")

    def routing_stats(self) -> dict:
        return self.engine.stats() if self.engine is not None else {}

    async def reset_prefix_cache(self) -> None:
        return None  # herd's engine keeps no prefix cache across requests

    async def embeddings(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator[Any, None]:
        yield _error("herd's engine serves no embeddings", 400, "model")

    async def transcriptions(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator[Any, None]:
        yield _error("herd's engine serves no transcriptions", 400, "model")

    # ------------------------------------------------------------------------------------------- helpers
    def _piece(self, token_id: int) -> str:
        return self.engine.tokenizer.decode([token_id], skip_special_tokens=False)

    def _params(self, req: Any, *, max_tokens: int | None, logprobs: int | None, echo: bool) -> Any:
        from herd.serve.engine import SamplingParams

        stop = req.stop if isinstance(req.stop, list) else ([req.stop] if req.stop else [])
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=max(0, req.top_k or 0), seed=req.seed,
            stop=list(stop), stop_token_ids=list(req.stop_token_ids or []), ignore_eos=bool(req.ignore_eos),
            logprobs=logprobs, prompt_logprobs=logprobs if echo and logprobs is not None else None,
            include_stop_str_in_output=bool(getattr(req, "include_stop_str_in_output", False)),
            skip_special_tokens=bool(getattr(req, "skip_special_tokens", True)))

    async def _run(self, prompts: list[list[int]], params: Any, rid: str) -> AsyncGenerator[tuple[int, Any], None]:
        """Deltas of every prompt as (index, delta), the prompts decoded concurrently in the engine."""
        if len(prompts) == 1:  # the common case: the engine's stream as it is (no pump task, no second queue)
            gen_ = self.engine.generate(prompts[0], params, request_id=f"{rid}-0", pace=self.pace)
            async with contextlib.aclosing(gen_) as gen:
                async for d in gen:  # leaving early (a disconnect) closes gen, which aborts in the engine
                    yield 0, d
            return
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, ids: list[int]) -> None:
            try:
                async for d in self.engine.generate(ids, params, request_id=f"{rid}-{i}", pace=self.pace):
                    await queue.put((i, d))
            except Exception as e:  # noqa: BLE001 - handed to the consumer, which answers it as an error
                await queue.put((i, e))
            finally:
                await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, ids)) for i, ids in enumerate(prompts)]
        left = len(tasks)
        try:
            while left:
                i, d = await queue.get()
                if d is None:
                    left -= 1
                    continue
                if isinstance(d, Exception):
                    raise d
                yield i, d
        finally:
            for t in tasks:  # a disconnect (GeneratorExit) cancels the tasks, which abort in the engine
                t.cancel()

    def _check(self, prompts: list[list[int]], params: Any) -> Any:
        from herd.serve.engine import EngineOverloadedError, EngineRequestError

        try:
            for ids in prompts:
                self.engine.check_request(ids, params)
            self.engine.check_capacity()  # up front: once a stream started, its status is 200
        except EngineRequestError as e:
            return _error(str(e), 400, getattr(e, "param", None))
        except EngineOverloadedError as e:
            return _error(f"herd engine overloaded: {e}; retry shortly", 503, None, "ServiceUnavailableError")
        return None

    def _mapped(self, e: Exception) -> Any:
        from herd.serve.engine import EngineOverloadedError, EngineRequestError

        if isinstance(e, EngineRequestError):
            return _error(str(e), 400, getattr(e, "param", None))
        if isinstance(e, EngineOverloadedError):
            return _error(f"herd engine overloaded: {e}; retry shortly", 503, None, "ServiceUnavailableError")
        raise e

    # ------------------------------------------------------------------------------------------ completions
    def _prompts(self, prompt: Any) -> list[list[int]] | str:
        if isinstance(prompt, str):
            return [self.engine.encode(prompt)]
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return [list(prompt)]
        if isinstance(prompt, list) and prompt:
            out = []
            for p in prompt:
                if isinstance(p, str):
                    out.append(self.engine.encode(p))
                elif isinstance(p, list) and p and all(isinstance(t, int) for t in p):
                    out.append(list(p))
                else:
                    return "prompt items must be strings or non-empty lists of token ids"
            return out
        return "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"

    async def completions(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator[Any, None]:
        prompts = self._prompts(request.prompt)
        if isinstance(prompts, str):
            yield _error(prompts, 400, "prompt")
            return
        if (request.n or 1) != 1:
            yield _error("herd's engine returns one choice per prompt: n must be 1", 400, "n")
            return
        for ids in prompts:
            bad = [t for t in ids if not 0 <= t < self._vocab]
            if bad:
                yield _error(f"prompt token ids {bad[:5]} are outside the vocabulary [0, {self._vocab})", 400,
                             "prompt")
                return
        echo = bool(request.echo)
        params = self._params(request, max_tokens=request.max_tokens, logprobs=request.logprobs, echo=echo)
        err = self._check(prompts, params)
        if err is not None:
            yield err
            return
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": sum(len(p) for p in prompts), "completion_tokens": 0}
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            sent_echo: set[int] = set()
            try:
                async for i, d in self._run(prompts, params, rid):
                    text, lp = d.text, None
                    if echo and i not in sent_echo:
                        sent_echo.add(i)
                        text = self.engine.decode(prompts[i], skip_special_tokens=False) + text
                        if request.logprobs is not None:
                            lp = self._completion_logprobs(prompts[i], d.prompt_logprobs, d.prompt_top_logprobs, 0)
                    if request.logprobs is not None and d.token_ids:
                        more = self._completion_logprobs(d.token_ids, d.logprobs, d.top_logprobs, 0)
                        lp = more if lp is None else {k: lp[k] + more[k] for k in lp}
                    usage["completion_tokens"] += len(d.token_ids)
                    # a delta of tokens with no text yet (a special token, a split character) is still sent, as
                    # vLLM does: the client sees its first token at once (time to first token)
                    if not text and not d.finished and lp is None and not d.token_ids:
                        continue
                    choice = {"index": i, "text": text, "logprobs": lp,
                              "finish_reason": d.finish_reason if d.finished else None}
                    yield _sse({"id": rid, "object": "text_completion", "created": created, "model": self.model_id,
                                "choices": [choice], "usage": None})
            except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error event (or re-raised)
                err = self._mapped(e)
                yield _sse(err.model_dump())
                return
            if include_usage:
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                yield _sse({"id": rid, "object": "text_completion", "created": created, "model": self.model_id,
                            "choices": [], "usage": usage})
            return
        outs: dict[int, list[Any]] = {i: [] for i in range(len(prompts))}
        try:
            async for i, d in self._run(prompts, params, rid):
                outs[i].append(d)
        except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error (or re-raised)
            yield self._mapped(e)
            return
        choices = []
        for i, ids in enumerate(prompts):
            ds = outs[i]
            out_ids = [t for d in ds for t in d.token_ids]
            text = "".join(d.text for d in ds)
            usage["completion_tokens"] += len(out_ids)
            lp = None
            if request.logprobs is not None:
                lp = self._completion_logprobs(out_ids, [x for d in ds for x in (d.logprobs or [])],
                                               [x for d in ds for x in (d.top_logprobs or [])], 0)
                if echo:
                    first = ds[0]
                    plp = self._completion_logprobs(ids, first.prompt_logprobs, first.prompt_top_logprobs, 0)
                    lp = {k: plp[k] + lp[k] for k in plp}
            if echo:
                text = self.engine.decode(ids, skip_special_tokens=False) + text
            if lp is not None:  # text_offset: running character offsets of the tokens in `text`
                off, acc = [], 0
                for tok in lp["tokens"]:
                    off.append(acc)
                    acc += len(tok)
                lp["text_offset"] = off
            choices.append({"index": i, "text": text, "logprobs": lp, "finish_reason": ds[-1].finish_reason,
                            "stop_reason": ds[-1].stop_reason})
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        yield CompletionResponse.model_validate({"id": rid, "object": "text_completion", "created": created,
                                                 "model": self.model_id, "choices": choices, "usage": usage})

    def _completion_logprobs(self, ids: list[int], lps: Any, tops: Any, _offset: int) -> dict[str, Any]:
        lps = list(lps or [None] * len(ids))
        tops = list(tops or [None] * len(ids))
        return {"tokens": [self._piece(t) for t in ids], "token_logprobs": lps,
                "top_logprobs": [None if t is None else {self._piece(k): v for k, v in t.items()} for t in tops],
                "text_offset": []}

    # ------------------------------------------------------------------------------------------------ chat
    async def chat(self, request: Any, raw_request_info: Any = None) -> AsyncGenerator[Any, None]:
        from herd.data.tokenizer import TokenizerError, encode_chat_batch

        messages = []
        for m in request.messages:
            m = dict(m) if not isinstance(m, dict) else m
            content = m.get("content")
            if not isinstance(content, str):  # text parts only: herd's engine serves text models
                content = "".join(p.get("text", "") for p in (content or []) if isinstance(p, dict))
            messages.append({"role": m.get("role"), "content": content})
        try:
            ids = encode_chat_batch(self.engine.tokenizer, [messages], add_generation_prompt=True)[0][0]
        except TokenizerError as e:
            yield _error(str(e), 400, "messages")
            return
        if (request.n or 1) != 1:
            yield _error("herd's engine returns one choice: n must be 1", 400, "n")
            return
        want_lp = bool(request.logprobs)
        k = (request.top_logprobs or 0) if want_lp else None
        params = self._params(request, max_tokens=request.max_completion_tokens or request.max_tokens,
                              logprobs=k, echo=False)
        err = self._check([ids], params)
        if err is not None:
            yield err
            return
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": rid, "created": created, "model": self.model_id}
        n_out = 0
        if request.stream:
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                 "finish_reason": None}], "usage": None})
            try:
                async for _, d in self._run([ids], params, rid):
                    n_out += len(d.token_ids)
                    if not d.text and not d.finished:
                        continue
                    lp = {"content": self._chat_logprobs(d.token_ids, d.logprobs, d.top_logprobs)} if want_lp else None
                    yield _sse({**base, "object": "chat.completion.chunk", "choices": [
                        {"index": 0, "delta": {"content": d.text}, "logprobs": lp,
                         "finish_reason": d.finish_reason if d.finished else None}], "usage": None})
            except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error event (or re-raised)
                yield _sse(self._mapped(e).model_dump())
                return
            if include_usage:
                yield _sse({**base, "object": "chat.completion.chunk", "choices": [], "usage": {
                    "prompt_tokens": len(ids), "completion_tokens": n_out, "total_tokens": len(ids) + n_out}})
            return
        ds = []
        try:
            async for _, d in self._run([ids], params, rid):
                ds.append(d)
        except Exception as e:  # noqa: BLE001 - mapped to an OpenAI error (or re-raised)
            yield self._mapped(e)
            return
        out_ids = [t for d in ds for t in d.token_ids]
        lp = None
        if want_lp:
            lp = {"content": self._chat_logprobs(out_ids, [x for d in ds for x in (d.logprobs or [])],
                                                 [x for d in ds for x in (d.top_logprobs or [])])}
        yield ChatCompletionResponse.model_validate({
            **base, "object": "chat.completion",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(d.text for d in ds)},
                         "logprobs": lp, "finish_reason": ds[-1].finish_reason, "stop_reason": ds[-1].stop_reason}],
            "usage": {"prompt_tokens": len(ids), "completion_tokens": len(out_ids),
                      "total_tokens": len(ids) + len(out_ids)}})

    def _chat_logprobs(self, ids: list[int], lps: Any, tops: Any) -> list[dict[str, Any]]:
        out = []
        for j, t in enumerate(ids):
            piece = self._piece(t)
            top = (tops or [None] * len(ids))[j] or {}
            out.append({"token": piece, "logprob": (lps or [0.0] * len(ids))[j], "bytes": list(piece.encode()),
                        "top_logprobs": [{"token": self._piece(a), "logprob": v, "bytes": list(self._piece(a).encode())}
                                         for a, v in top.items()]})
        return out


class HerdServer(StreamBatching, LLMServer):
    """Ray Serve LLM's server with herd's engine (``LLMConfig(server_cls=HerdServer)``); streams batched by load
    (``herd.serve.streaming``)."""

    _default_engine_cls = HerdEngine
    _paced_source = True  # the engine merges each stream's tokens per batcher interval (Engine.generate's pace)

    async def _start_engine(self) -> None:
        # LLMServer's version also pushes Ray's usage telemetry, which parses engine_kwargs as vLLM arguments
        await self.engine.start()
        self.engine.pace = self._stream_batcher().interval if self._paced_source else None

    @classmethod
    def get_deployment_options(cls, llm_config: Any) -> dict[str, Any]:
        # LLMServer's version sizes a placement group from vLLM's engine config; herd's engine is one actor.
        import ray

        from herd.serve.vllm_app import replica_runtime_env

        opts = copy.deepcopy(llm_config.deployment_config)
        rao = opts.setdefault("ray_actor_options", {})
        rao["runtime_env"] = replica_runtime_env(ray.get_runtime_context().runtime_env, rao.get("runtime_env"),
                                                 llm_config.runtime_env)
        return opts


__all__ = ["HerdEngine", "HerdServer", "llm_config"]
