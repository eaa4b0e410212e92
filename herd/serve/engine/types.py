"""The engine's request and result types: what callers pass in and get back (see ``herd.serve.engine``).

``SamplingParams`` follows vLLM's semantics (and so OpenAI's) so an ingress maps requests field by field:
temperature 0 = greedy, ``top_k`` 0 = off, ``top_p`` 1 = off, ``max_tokens`` None = up to the context,
``logprobs`` k = the sampled token's logprob plus the top-k alternatives, ``prompt_logprobs`` k = the same for
every prompt token (the first is None): what an ``echo`` + ``logprobs`` completion needs (lm-eval's
loglikelihood). Logprobs are the model's raw log-softmax, before temperature / top-k / top-p (vLLM's default).

A finished sequence's ``token_ids`` INCLUDE the stop token id that ended it (as vLLM's do; RL needs its logprob),
its ``text`` does not; ``stop_reason`` names what fired: the token id or the stop string.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "abort"]


class EngineError(Exception):
    """Base of the engine's errors."""


class EngineRequestError(EngineError, ValueError):
    """A request the engine cannot run as asked (a serving ingress answers 400). ``param`` names the field."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


class PromptTooLongError(EngineRequestError):
    """Prompt (+ max_tokens) longer than the engine's ``max_model_len`` (a 400, OpenAI's context-length error)."""


class EngineOverloadedError(EngineError):
    """The waiting queue is full (``EngineConfig.max_waiting``): retry later (a serving ingress answers 503)."""


class EngineDeadError(EngineError):
    """The engine's step loop stopped on an error or was shut down; the cause is chained."""


@dataclass
class SamplingParams:
    """Per-request decoding settings (vLLM's names and defaults)."""

    max_tokens: int | None = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True

    def validate(self, vocab_size: int) -> None:
        """Raise ``EngineRequestError`` naming the bad field and its valid range."""

        def bad(param: str, why: str) -> EngineRequestError:
            return EngineRequestError(f"{param}={getattr(self, param)!r} is invalid: {why}", param)

        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "must be at least 1 (or None for up to the context length)")
        if not (math.isfinite(self.temperature) and self.temperature >= 0):
            raise bad("temperature", "must be >= 0 (0 = greedy)")
        if not (0 < self.top_p <= 1):
            raise bad("top_p", "must be in (0, 1] (1 = off)")
        if self.top_k < 0 and self.top_k != -1:
            raise bad("top_k", "must be >= 0 (0 or -1 = off)")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not (0 <= k <= vocab_size):
                raise bad(name, f"must be between 0 and the vocabulary size {vocab_size}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise bad("stop", "stop strings must be non-empty strings")
        if any(not (0 <= t < vocab_size) for t in self.stop_token_ids):
            raise bad("stop_token_ids", f"token ids must be in [0, {vocab_size})")


@dataclass
class RequestOutput:
    """One streamed delta of a request: what is new since the previous delta.

    ``text`` may lag ``token_ids`` by a few characters: text that could be the start of a stop string, or an
    incomplete UTF-8 character, is held back until it is decided. ``prompt_logprobs`` comes with the first delta
    only (when asked); the last delta has ``finished`` True and the ``finish_reason``."""

    request_id: str
    token_ids: list[int]
    text: str
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    finished: bool = False
    finish_reason: FinishReason | None = None
    stop_reason: int | str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0  # cumulative, so the last delta carries the usage
    prompt_greedy: list[bool | None] | None = None  # with prompt_logprobs: each prompt token is the argmax
    ttft_s: float | None = None  # last delta only: arrival -> first generated token
    latency_s: float | None = None  # last delta only: arrival -> finished

    def then(self, later: RequestOutput) -> RequestOutput:
        """This delta followed by ``later`` as one delta (a stream consumer that fell behind the step loop gets
        what is ready in one piece: fewer, larger chunks, the same tokens and text)."""

        def cat(a: list | None, b: list | None) -> list | None:
            return None if a is None and b is None else [*(a or []), *(b or [])]

        return RequestOutput(
            self.request_id,
            [*self.token_ids, *later.token_ids],
            self.text + later.text,
            cat(self.logprobs, later.logprobs),
            cat(self.top_logprobs, later.top_logprobs),
            self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs,
            self.prompt_top_logprobs if self.prompt_top_logprobs is not None else later.prompt_top_logprobs,
            later.finished,
            later.finish_reason,
            later.stop_reason,
            later.num_prompt_tokens,
            later.num_output_tokens,
            self.prompt_greedy if self.prompt_greedy is not None else later.prompt_greedy,
            later.ttft_s,
            later.latency_s,
        )


@dataclass
class Completion:
    """A finished request, all deltas merged (what ``Engine.generate_batch`` returns)."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: FinishReason
    stop_reason: int | str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[dict[int, float]] | None = None
    prompt_logprobs: list[float | None] | None = None
    prompt_top_logprobs: list[dict[int, float] | None] | None = None
    ttft_s: float | None = None  # arrival -> first generated token
    latency_s: float | None = None  # arrival -> finished

    @property
    def usage(self) -> dict[str, int]:
        n, m = len(self.prompt_token_ids), len(self.token_ids)
        return {"prompt_tokens": n, "completion_tokens": m, "total_tokens": n + m}

    @classmethod
    def merge(cls, prompt: list[int], deltas: list[RequestOutput]) -> Completion:
        last = deltas[-1]
        if not last.finished or last.finish_reason is None:
            raise ValueError(f"request {last.request_id} is not finished")
        first = deltas[0]
        want = first.logprobs is not None
        return cls(
            request_id=last.request_id,
            prompt_token_ids=list(prompt),
            token_ids=[t for d in deltas for t in d.token_ids],
            text="".join(d.text for d in deltas),
            finish_reason=last.finish_reason,
            stop_reason=last.stop_reason,
            logprobs=[x for d in deltas for x in (d.logprobs or [])] if want else None,
            top_logprobs=[x for d in deltas for x in (d.top_logprobs or [])] if want else None,
            prompt_logprobs=first.prompt_logprobs,
            prompt_top_logprobs=first.prompt_top_logprobs,
            ttft_s=last.ttft_s,
            latency_s=last.latency_s,
        )


@dataclass
class ScoreOutput:
    """Per-token log-probabilities of a token sequence under the model (``Engine.score``).

    ``token_logprobs[i]`` = log p(token_ids[i] | token_ids[:i]); the first is None (nothing conditions it).
    ``is_greedy[i]``: token i is the argmax continuation (lm-eval's is_greedy). ``top_logprobs`` only when asked."""

    token_ids: list[int]
    token_logprobs: list[float | None]
    is_greedy: list[bool | None]
    top_logprobs: list[dict[int, float] | None] | None = None

    def loglikelihood(self, start: int) -> tuple[float, bool]:
        """Sum of logprobs of tokens [start:] and whether all of them are greedy (a continuation's score)."""
        if not 1 <= start <= len(self.token_ids):
            raise ValueError(f"start must be in [1, {len(self.token_ids)}], got {start}")
        lps = self.token_logprobs[start:]
        return float(sum(x for x in lps if x is not None)), all(bool(g) for g in self.is_greedy[start:])
