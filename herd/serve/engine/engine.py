"""``Engine``: herd's continuous-batching engine, with an asyncio face for serving and a sync batch face for
evaluation and RL, over one ``EngineCore``. Usage: see the package docstring (``herd.serve.engine``).

Threading: the async face runs the step loop on one background thread (started on first use; torch releases
the GIL in its kernels, so the event loop stays responsive). New requests and aborts reach it through a
thread-safe inbox; results come back through each request's sink into a per-event-loop mailbox that wakes the
loop once per step (not once per token: 32 streams would be 32 wake-ups a step), and a stream that fell behind
gets what is ready as one merged delta. The sync face drives the same step loop in the caller's thread when no
background loop runs, else submits to it and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from herd.serve.engine.config import EngineConfig
from herd.serve.engine.core import EngineCore, Sink
from herd.serve.engine.types import (
    Completion,
    EngineDeadError,
    EngineOverloadedError,
    EngineRequestError,
    RequestOutput,
    SamplingParams,
    ScoreOutput,
)


class _Pending:
    """One stream's outputs not yielded yet, filled on its event loop by ``_Mailbox``. ``final`` is set by the
    last one (finished, or an error), which ends a paced stream's wait at once."""

    __slots__ = ("final", "items", "ready")

    def __init__(self) -> None:
        self.items: deque[RequestOutput | BaseException] = deque()
        self.ready = asyncio.Event()
        self.final = asyncio.Event()

    def put_nowait(self, out: RequestOutput | BaseException) -> None:
        self.items.append(out)
        self.ready.set()
        if isinstance(out, BaseException) or out.finished:
            self.final.set()

    def take(self) -> RequestOutput | BaseException:
        """Everything ready as one delta (or the error that ended the stream)."""
        out = self.items.popleft()
        while not isinstance(out, BaseException) and not out.finished and self.items:
            nxt = self.items.popleft()
            out = nxt if isinstance(nxt, BaseException) else out.then(nxt)
        if not self.items:
            self.ready.clear()
        return out


class _Mailbox:
    """Outputs of the step thread for the streams of one asyncio loop, handed over with one wake-up per batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.items: list[tuple[_Pending, RequestOutput | BaseException]] = []
        self.lock = threading.Lock()

    def put(self, queue: _Pending, out: RequestOutput | BaseException) -> None:
        with self.lock:
            self.items.append((queue, out))
            if len(self.items) > 1:  # a flush is already scheduled and will take this one too
                return
        try:
            self.loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop was closed: nobody is listening any more
            pass

    def _flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for queue, out in items:
            queue.put_nowait(out)


class Engine:
    """Continuous batching over a herd ``Llama4`` (or any module with its forward / lm_head / config)."""

    def __init__(self, model: nn.Module, tokenizer: Any | None = None, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.num_threads is not None:
            torch.set_num_threads(self.config.num_threads)
        self.model = model  # used as it is: weights updated in place (RL) are seen from the next step on
        self.tokenizer = tokenizer
        self.core = EngineCore(self.model, tokenizer, self.config)
        self._step_lock = threading.Lock()  # one step at a time, whoever drives
        self._inbox: deque[Callable[[], None]] = deque()  # adds and aborts, applied by the stepping thread
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._dead: BaseException | None = None
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = (
            weakref.WeakKeyDictionary()
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        config: EngineConfig | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: str | torch.device = "cpu",
    ) -> Engine:
        """Load a herd/HF Llama 4 checkpoint dir (``herd.model.load_hf``) and its ``tokenizer.json``."""
        from herd.model import load_hf

        path = Path(path)
        tok = None
        if (path / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        return cls(load_hf(path, dtype=dtype, device=device), tok, config)

    # --- properties and helpers -------------------------------------------------------------------------------
    @property
    def max_model_len(self) -> int:
        return self.core.max_len

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (with bos when ``add_special_tokens``), using the checkpoint's tokenizer."""
        return list(self._tok().encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return str(self._tok().decode(list(token_ids), skip_special_tokens=skip_special_tokens))

    def _tok(self) -> Any:
        if self.tokenizer is None:
            raise EngineRequestError("this Engine has no tokenizer: pass one, or send token ids")
        return self.tokenizer

    def check_request(self, prompt_token_ids: Sequence[int], params: SamplingParams) -> None:
        """Raise the error ``generate`` would raise for this request (an ingress maps it to a 400 up front)."""
        self.core.check(list(prompt_token_ids), params)
        if params.stop and self.tokenizer is None:
            raise EngineRequestError("stop strings need a tokenizer: build the Engine with one", "stop")

    def check_capacity(self) -> None:
        """Raise ``EngineOverloadedError`` when the waiting queue is full, as a submit would (an ingress answers
        503 before it starts a stream). Thread-safe (reads queue lengths)."""
        waiting = len(self.core.scheduler.waiting) + len(self._inbox)
        if waiting >= self.config.max_waiting:
            raise EngineOverloadedError(f"{waiting} requests are waiting (max_waiting {self.config.max_waiting})")

    @property
    def error(self) -> BaseException | None:
        """Why the step loop stopped (a failed forward), or None while it is healthy: a health check reads this."""
        return self._dead

    def stats(self) -> dict[str, int]:
        sch = self.core.scheduler
        return {
            "running": len(sch.running),
            "waiting": len(sch.waiting),
            "free_slots": len(sch.free),
            "steps": self.core.steps,
            "tokens_computed": self.core.tokens_computed,
        }

    # --- the step loop ----------------------------------------------------------------------------------------
    def _submit(self, fn: Callable[[], None]) -> None:
        if self._dead is not None:
            raise EngineDeadError(f"the engine's step loop stopped: {self._dead}") from self._dead
        self._inbox.append(fn)
        self._wake.set()

    def _drain(self) -> None:
        while self._inbox:
            self._inbox.popleft()()

    def _add(self, rid: str, prompt: list[int], params: SamplingParams, sink: Sink, score: bool) -> None:
        try:
            self.core.add(rid, prompt, params, sink, score)
        except Exception as e:  # noqa: BLE001 - a refused request (overload, duplicate id) ends its own stream
            sink(e)

    def _step_once(self) -> int:
        with self._step_lock:
            self._drain()
            try:
                return self.core.step()
            except Exception as e:  # a failed forward ends every request with the error, not a hang
                self._dead = e
                self.core.fail_all(EngineDeadError(f"engine step failed: {e!r}"))
                raise

    def _loop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                if self._step_once() or self._inbox:
                    continue
            except Exception:  # noqa: BLE001 - recorded in self._dead and sent to every request's sink
                return
            self._wake.wait(timeout=1.0)

    def start(self) -> None:
        """Start the background step loop (the async face does this on first use)."""
        if self._thread is None or not self._thread.is_alive():
            self._stopping = False
            self._thread = threading.Thread(target=self._loop, name="herd-engine", daemon=True)
            self._thread.start()

    def shutdown(self) -> None:
        """Stop the background loop, abort what is left, and remove the engine's hook from the model."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        with self._step_lock:
            self._drain()
            for rid in list(self.core.requests):
                self.core.abort(rid)
            self.core.close()

    def abort(self, request_id: str) -> None:
        """Cancel a request (waiting or running): its slot is freed and its stream ends with finish_reason
        "abort". Thread-safe; unknown or finished ids are ignored."""
        self._inbox.append(lambda: self.core.abort(request_id))
        self._wake.set()

    # --- async face -------------------------------------------------------------------------------------------
    async def generate(
        self,
        prompt_token_ids: Sequence[int],
        params: SamplingParams,
        request_id: str | None = None,
        *,
        pace: Callable[[], float] | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Stream a request's deltas (the last has ``finished``): each holds the tokens and text new since the
        previous one (one token per step while the consumer keeps up, several when it fell behind). Leaving the
        iteration early (a client disconnect cancels the task) aborts the request and frees its slot.

        ``pace`` (a server's stream interval, in seconds, read before each wait) paces the stream: the first delta
        goes out at once, each later one at least ``pace()`` after the previous, holding every token made
        meanwhile, and the last one (finished, or an error) at once. Same tokens and text in fewer, larger deltas:
        a server sends one message per interval per stream instead of one per token."""
        prompt = list(prompt_token_ids)
        self.check_request(prompt, params)
        rid = request_id or uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        box = self._mailboxes.get(loop)
        if box is None:
            box = self._mailboxes[loop] = _Mailbox(loop)
        pending = _Pending()

        def sink(out: RequestOutput | BaseException) -> None:
            box.put(pending, out)

        self.start()
        self._submit(lambda: self._add(rid, prompt, params, sink, False))
        finished = False
        last: float | None = None  # loop time of the previous yield (None: nothing sent yet)
        try:
            while True:
                if pace is not None and last is not None and not pending.final.is_set():
                    hold = pace() - (loop.time() - last)
                    if hold > 0:  # let this interval's tokens pile up; the last output ends the wait
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(pending.final.wait(), hold)
                await pending.ready.wait()
                out = pending.take()  # what is ready as one delta: the stream fell behind, or was paced
                if isinstance(out, BaseException):
                    raise out
                last = loop.time()
                yield out
                if out.finished:
                    finished = True
                    return
        finally:
            if not finished:
                self.abort(rid)

    # --- sync face --------------------------------------------------------------------------------------------
    def _run(self, items: list[tuple[list[int], SamplingParams]], score: bool) -> list[list[RequestOutput]]:
        outs: list[list[RequestOutput]] = [[] for _ in items]
        errors: list[BaseException] = []
        remaining = [len(items)]
        done = threading.Event()

        def sink_for(i: int) -> Sink:
            def sink(out: RequestOutput | BaseException) -> None:
                if isinstance(out, BaseException):
                    errors.append(out)
                    out_finished = True
                else:
                    outs[i].append(out)
                    out_finished = out.finished
                if out_finished:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()

            return sink

        for prompt, params in items:  # validate everything before anything runs
            self.core.check(prompt, params, score)
        rids = [uuid.uuid4().hex for _ in items]
        for i, (prompt, params) in enumerate(items):
            self._submit(lambda i=i, p=prompt, sp=params: self._add(rids[i], p, sp, sink_for(i), score))
        if not items:
            return outs
        if self._thread is not None and self._thread.is_alive():
            done.wait()
        else:
            while not done.is_set():
                self._step_once()
        if errors:
            raise errors[0]
        return outs

    def generate_batch(
        self,
        prompts: Sequence[Sequence[int]],
        params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[Completion]:
        """Complete every prompt (token id lists); one ``SamplingParams`` for all or one per prompt. Returns one
        ``Completion`` per prompt, in order. Requests are batched continuously, ``max_num_seqs`` at a time."""
        plist = _per_prompt(prompts, params)
        items = [(list(p), sp) for p, sp in zip(prompts, plist, strict=True)]
        return [Completion.merge(p, o) for (p, _), o in zip(items, self._run(items, False), strict=True)]

    def score(self, token_ids_list: Sequence[Sequence[int]], top_logprobs: int = 0) -> list[ScoreOutput]:
        """Per-token logprobs of each sequence (teacher forcing, no generation): loglikelihood / perplexity."""
        params = SamplingParams(max_tokens=1, prompt_logprobs=top_logprobs)
        items = [(list(t), params) for t in token_ids_list]
        res = []
        for (toks, _), outs in zip(items, self._run(items, True), strict=True):
            first = outs[0]
            assert first.prompt_logprobs is not None and first.prompt_greedy is not None
            res.append(
                ScoreOutput(
                    toks,
                    first.prompt_logprobs,
                    first.prompt_greedy,
                    first.prompt_top_logprobs if top_logprobs else None,
                )
            )
        return res


def generate_once(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    params: SamplingParams | Sequence[SamplingParams],
    *,
    max_num_seqs: int,
    max_num_batched_tokens: int,
    seed: int = 0,
) -> list[Completion]:
    """Complete a batch of token-id prompts on a throwaway engine over ``model`` (evaluation, the SFT judge, RL
    rollouts): at most ``max_num_seqs`` slots, each as long as the longest prompt + its ``max_tokens``, every
    prompt queued at once, and the engine shut down after, removing its hooks, since the model goes on being
    trained or scored. No tokenizer: callers decode the answers once, not incrementally per token."""
    plist = _per_prompt(prompts, params)
    if any(sp.max_tokens is None for sp in plist):
        raise EngineRequestError("generate_once sizes its slots by max_tokens: set it on every request", "max_tokens")
    if not prompts:
        return []
    n = max(1, min(max_num_seqs, len(prompts)))
    longest = max(len(p) + int(sp.max_tokens or 0) for p, sp in zip(prompts, plist, strict=True))
    engine = Engine(model, None, EngineConfig(max_num_seqs=n, max_model_len=longest, seed=seed,
                                              max_num_batched_tokens=max(max_num_batched_tokens, n),
                                              max_waiting=len(prompts)))
    try:
        return engine.generate_batch([list(p) for p in prompts], plist)
    finally:
        engine.shutdown()


def _per_prompt(
    prompts: Sequence[Sequence[int]], params: SamplingParams | Sequence[SamplingParams] | None
) -> list[SamplingParams]:
    if params is None or isinstance(params, SamplingParams):
        return [params or SamplingParams()] * len(prompts)
    plist = list(params)
    if len(plist) != len(prompts):
        raise EngineRequestError(
            f"{len(plist)} SamplingParams for {len(prompts)} prompts: pass one or one each", "params"
        )
    return plist
