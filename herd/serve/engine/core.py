"""``EngineCore``: one continuous-batching step over herd's Llama 4 (single-threaded; ``Engine`` wraps it).

``step()`` schedules (``scheduler.py``), packs every scheduled sequence's tokens into ONE forward of shape
(1, T) with per-token positions, lets the slot pool (``kv.py``) route attention per sequence, computes logits
only at the rows that need them (a sequence's last fed token; every prompt row when prompt logprobs are asked),
samples all rows at once (``sampling.py``) and then does the per-sequence bookkeeping: stop ids, stop strings,
max_tokens, streamed deltas.

The model is used only through its ``forward`` (``positions=``, ``kv=``) and ``lm_head`` module, so quantized
Linear modules swapped in from outside work unchanged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from herd.serve.engine.config import EngineConfig
from herd.serve.engine.kv import Segment, SlotKV, StepPlan
from herd.serve.engine.sampling import sample, token_logprobs
from herd.serve.engine.scheduler import ScheduledRow, Scheduler, Sequence
from herd.serve.engine.text import Detokenizer, StopStrings
from herd.serve.engine.types import (
    EngineOverloadedError,
    EngineRequestError,
    PromptTooLongError,
    RequestOutput,
    SamplingParams,
)

Sink = Callable[[RequestOutput | BaseException], None]


def _param_like(model: nn.Module) -> torch.Tensor:
    """The embedding weight: its dtype/device are the activations' (quantized Linears may hold int tensors)."""
    return model.model.embed_tokens.weight  # type: ignore[union-attr,return-value]


def kv_dtype(name: str, ref: torch.Tensor) -> torch.dtype:
    """The slots' dtype: ``name``, or for "auto" fp32 on CPU and the weights' dtype elsewhere.

    Why fp32 on CPU under bf16 weights: the batched decode step's attention (32 rows x 4 heads x <= 1k keys of 64)
    runs about 2x slower in bf16 there (measured: 0.84 vs 0.39 s of SDPA in 130 steps), while bf16 linears are
    1.3x faster; attention then takes q/k/v in fp32 and answers in the model's dtype (``SlotKV.attend``)."""
    if name != "auto":
        return getattr(torch, name)
    return torch.float32 if ref.device.type == "cpu" else ref.dtype


class EngineCore:
    """Slot pool + scheduler + step. Not thread-safe: ``Engine`` serialises calls."""

    def __init__(self, model: nn.Module, tokenizer: Any | None, config: EngineConfig):
        self.model, self.tokenizer, self.config = model, tokenizer, config
        cfg = model.config  # type: ignore[attr-defined]
        self.vocab_size: int = cfg.vocab_size
        self.eos_ids = frozenset(cfg.eos_token_id)
        self.max_len = config.max_model_len or cfg.max_position_embeddings
        ref = _param_like(model)
        self.device = ref.device
        self.kv = SlotKV(cfg, config.max_num_seqs, self.max_len, dtype=kv_dtype(config.kv_dtype, ref),
                         device=ref.device)
        self.scheduler = Scheduler(config.max_num_seqs, config.max_num_batched_tokens)
        self.requests: dict[str, Sequence] = {}
        self.shared_gen = torch.Generator(device=self.device).manual_seed(config.seed)
        # logits only at the rows that need them: the hook narrows lm_head's input during the engine's forward
        self._select: torch.Tensor | None = None
        self._select_thread: int | None = None
        self._hook = model.lm_head.register_forward_pre_hook(self._narrow)  # type: ignore[union-attr]
        self.steps = 0
        self.tokens_computed = 0

    def _narrow(self, module: nn.Module, args: tuple) -> tuple | None:
        if self._select is None or threading.get_ident() != self._select_thread:
            return None
        return (args[0][:, self._select],)

    def close(self) -> None:
        self._hook.remove()

    # --- requests ---------------------------------------------------------------------------------------------
    def check(self, prompt: list[int], params: SamplingParams, score: bool = False) -> int:
        """Validate a request; return its max_tokens (0 for scoring)."""
        if not prompt:
            raise EngineRequestError(
                "the prompt is empty: send at least one token (start it with bos)", "prompt"
            )
        bad = [t for t in prompt if not (isinstance(t, int) and 0 <= t < self.vocab_size)]
        if bad:
            raise EngineRequestError(
                f"prompt token ids must be integers in [0, {self.vocab_size}), got {bad[:5]}", "prompt"
            )
        params.validate(self.vocab_size)
        n = len(prompt)
        if score:
            if n > self.max_len:
                raise PromptTooLongError(
                    f"sequence of {n} tokens is longer than the engine's max_model_len {self.max_len}",
                    "prompt",
                )
            return 0
        if n >= self.max_len:
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_len} tokens, but the prompt has {n} tokens "
                "(no room to generate): shorten the prompt",
                "prompt",
            )
        if params.max_tokens is None:
            return self.max_len - n
        if n + params.max_tokens > self.max_len:
            raise PromptTooLongError(
                f"This model's maximum context length is {self.max_len} tokens, but {n} prompt tokens + "
                f"max_tokens {params.max_tokens} = {n + params.max_tokens}: shorten the prompt or lower max_tokens",
                "max_tokens",
            )
        return params.max_tokens

    def add(
        self, request_id: str, prompt: list[int], params: SamplingParams, sink: Sink, score: bool = False
    ) -> None:
        if request_id in self.requests:
            raise EngineRequestError(f"request id {request_id!r} is already running", "request_id")
        if len(self.scheduler.waiting) >= self.config.max_waiting:
            raise EngineOverloadedError(
                f"{len(self.scheduler.waiting)} requests are waiting (max_waiting): retry later"
            )
        max_tokens = self.check(prompt, params, score)
        stop_ids = frozenset(params.stop_token_ids) | (frozenset() if params.ignore_eos else self.eos_ids)
        seq = Sequence(request_id, list(prompt), params, sink, stop_ids, max_tokens)
        if params.seed is not None and params.temperature > 0:
            seq.generator = torch.Generator(device=self.device).manual_seed(params.seed)
        if self.tokenizer is not None and not score:
            seq.detok = Detokenizer(self.tokenizer, seq.prompt, params.skip_special_tokens)
            seq.stops = StopStrings(list(params.stop), params.include_stop_str_in_output)
        elif params.stop and not score:
            raise EngineRequestError("stop strings need a tokenizer: build the Engine with one", "stop")
        if params.prompt_logprobs is not None or score:
            seq.prompt_logprobs, seq.prompt_top, seq.prompt_greedy = [None], [None], [None]
        self.requests[request_id] = seq
        self.scheduler.waiting.append(seq)

    def abort(self, request_id: str) -> bool:
        seq = self.requests.pop(request_id, None)
        if seq is None:
            return False
        self.scheduler.remove(seq)
        seq.sink(
            RequestOutput(
                request_id,
                [],
                "",
                finished=True,
                finish_reason="abort",
                num_prompt_tokens=len(seq.prompt),
                num_output_tokens=len(seq.output),
            )
        )
        return True

    def fail_all(self, err: BaseException) -> None:
        for seq in list(self.requests.values()):
            self.scheduler.remove(seq)
            seq.sink(err)
        self.requests.clear()

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # --- the step ---------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> int:
        """Run one step; returns the number of tokens computed (0: nothing to do)."""
        rows = self.scheduler.schedule()
        if not rows:
            return 0
        singles = sorted((r for r in rows if r.n == 1), key=lambda r: r.seq.slot)
        # fresh prompts (nothing cached) last and together: kv.py attends them as one block
        multis = [r for r in rows if r.n > 1 and r.seq.computed > 0] + [
            r for r in rows if r.n > 1 and r.seq.computed == 0
        ]
        ids: list[int] = []
        pos: list[int] = []
        segments: list[Segment] = []
        select: list[int] = []  # packed rows whose logits are computed
        prompt_rows: list[tuple[ScheduledRow, int, int]] = []  # (row, first selected index, count)
        sample_rows: list[tuple[ScheduledRow, int]] = []  # (row, selected index of its last token)
        for r in [*singles, *multis]:
            s, off = r.seq, len(ids)
            toks = [s.token_at(i) for i in range(s.computed, s.computed + r.n)]
            if r.n > 1:
                segments.append(Segment(s.slot, s.computed, r.n, off))
            ids.extend(toks)
            pos.extend(range(s.computed, s.computed + r.n))
            # prompt logprobs: row i (position c+i) predicts the prompt token at c+i+1
            n_prompt = (
                max(0, min(s.computed + r.n, len(s.prompt) - 1) - s.computed) if s.prompt_logprobs else 0
            )
            if n_prompt:
                prompt_rows.append((r, len(select), n_prompt))
                select.extend(range(off, off + n_prompt))
            if r.completes and s.max_tokens > 0:
                sample_rows.append((r, len(select)))
                select.append(off + r.n - 1)
        plan = StepPlan(
            [r.seq.slot for r in singles], [r.seq.computed for r in singles], segments, self.device
        )
        self.kv.plan = plan
        sel_t = torch.tensor(select, device=self.device, dtype=torch.long)
        self._select, self._select_thread = sel_t, threading.get_ident()
        # eval mode for the forward only: an RL trainer may share this model and keep it in train mode
        # (train-mode MoE layers would count this step's routing into the balancing statistics)
        training = self.model.training
        if training:
            self.model.eval()
        try:
            logits = self.model(
                torch.tensor([ids], device=self.device),
                positions=torch.tensor([pos], device=self.device),
                kv=self.kv,
            ).logits[0]
        finally:
            self._select, self.kv.plan = None, None
            if training:
                self.model.train()
        if logits.shape[0] != len(select):  # lm_head was replaced after the hook was set: narrow here
            logits = logits[sel_t]
        logits = logits.float()
        for r in rows:
            r.seq.computed += r.n
        self.steps += 1
        self.tokens_computed += len(ids)
        if prompt_rows:
            self._prompt_logprobs(logits, prompt_rows)
        for r in rows:  # score-only requests finish once their whole sequence is in
            s = r.seq
            if s.max_tokens == 0 and s.computed == len(s.prompt):
                self._finish(s, [], "", "length", None, None, None)
        if sample_rows:
            self._sample(logits, sample_rows)
        return len(ids)

    def _prompt_logprobs(
        self, logits: torch.Tensor, prompt_rows: list[tuple[ScheduledRow, int, int]]
    ) -> None:
        idx, targets, ks = [], [], []
        for r, first, count in prompt_rows:
            c = r.seq.computed - r.n  # position of the row's first token (computed was advanced already)
            idx.extend(range(first, first + count))
            targets.extend(r.seq.prompt[c + 1 : c + 1 + count])
            ks.append(r.seq.params.prompt_logprobs or 0)
        lp, top, greedy = token_logprobs(
            logits[torch.tensor(idx, device=logits.device)],
            torch.tensor(targets, device=logits.device),
            max(ks),
        )
        i = 0
        for (r, _, count), k in zip(prompt_rows, ks, strict=True):
            s = r.seq
            assert s.prompt_logprobs is not None and s.prompt_top is not None and s.prompt_greedy is not None
            s.prompt_logprobs.extend(lp[i : i + count])
            s.prompt_top.extend(
                _trim(d, k, t, x)
                for d, t, x in zip(top[i : i + count], targets[i : i + count], lp[i : i + count])
            )
            s.prompt_greedy.extend(greedy[i : i + count])
            i += count

    def _sample(self, logits: torch.Tensor, sample_rows: list[tuple[ScheduledRow, int]]) -> None:
        seqs = [r.seq for r, _ in sample_rows]
        picks = [j for _, j in sample_rows]
        # decode-only steps select exactly the sampled rows, in order: no gather needed
        x = (
            logits
            if picks == list(range(logits.shape[0]))
            else logits[torch.tensor(picks, device=logits.device)]
        )
        ps = [s.params for s in seqs]
        toks_t = sample(
            x,
            [p.temperature for p in ps],
            [p.top_k for p in ps],
            [p.top_p for p in ps],
            [s.generator for s in seqs],
            self.shared_gen,
        )
        want = [i for i, p in enumerate(ps) if p.logprobs is not None]
        lps: dict[int, tuple[float, dict[int, float]]] = {}
        if want:
            w = torch.tensor(want, device=x.device)
            kmax = max(ps[i].logprobs or 0 for i in want)
            lp, top, _ = token_logprobs(x[w], toks_t[w], kmax)
            for j, i in enumerate(want):
                lps[i] = (lp[j], _trim(top[j], ps[i].logprobs or 0, int(toks_t[i]), lp[j]))
        now = time.perf_counter()
        for i, (s, t) in enumerate(zip(seqs, toks_t.tolist(), strict=True)):
            self._advance(s, t, lps.get(i), now)

    def _advance(self, s: Sequence, t: int, lp: tuple[float, dict[int, float]] | None, now: float) -> None:
        """Append sampled token ``t`` to ``s``; emit its delta; finish it if a stop condition holds."""
        s.output.append(t)
        if s.first_token is None:
            s.first_token = now
        reason, stop_reason, text = None, None, ""
        if t in s.stop_ids:
            reason, stop_reason = "stop", t
        elif s.detok is not None and s.stops is not None:
            text, hit = s.stops.add(s.detok.add(t))
            if hit is not None:
                reason, stop_reason = "stop", hit
        if reason is None and (len(s.output) >= s.max_tokens or s.num_tokens >= self.max_len):
            reason = "length"
        if reason is not None and not isinstance(stop_reason, str) and s.stops is not None:
            text += s.stops.flush()  # ended by a token or the length: the held-back tail is final text
        lps = None if lp is None else [lp[0]]
        tops = None if lp is None else [lp[1]]
        if reason is not None:
            self._finish(s, [t], text, reason, stop_reason, lps, tops)
        else:
            s.sink(self._delta(s, [t], text, lps, tops))

    def _delta(
        self,
        s: Sequence,
        toks: list[int],
        text: str,
        lps: list[float] | None,
        tops: list[dict[int, float]] | None,
    ) -> RequestOutput:
        out = RequestOutput(
            s.request_id,
            toks,
            text,
            lps,
            tops,
            num_prompt_tokens=len(s.prompt),
            num_output_tokens=len(s.output),
        )
        if not s.prompt_sent:
            out.prompt_logprobs, out.prompt_top_logprobs = s.prompt_logprobs, s.prompt_top
            out.prompt_greedy = s.prompt_greedy
            s.prompt_sent = True
        return out

    def _finish(
        self,
        s: Sequence,
        toks: list[int],
        text: str,
        reason: str,
        stop_reason: int | str | None,
        lps: list[float] | None,
        tops: list[dict[int, float]] | None,
    ) -> None:
        out = self._delta(s, toks, text, lps, tops)
        out.finished, out.finish_reason, out.stop_reason = True, reason, stop_reason  # type: ignore[assignment]
        out.ttft_s = None if s.first_token is None else s.first_token - s.arrival
        out.latency_s = time.perf_counter() - s.arrival
        self.scheduler.remove(s)
        self.requests.pop(s.request_id, None)
        s.sink(out)


def _trim(top: dict[int, float], k: int, token: int, logprob: float) -> dict[int, float]:
    """The best ``k`` entries of a top-k dict (ordered best first) plus the chosen token (OpenAI: up to k+1)."""
    head = dict(list(top.items())[:k])
    head.setdefault(token, logprob)
    return head
