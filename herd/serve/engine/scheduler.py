"""Sequences and the per-step schedule: which sequences run this step, and how many tokens each feeds.

vLLM V1's formulation (serve-eval-notes §5.3): there is no prefill or decode phase. A sequence has the tokens it
has (prompt + generated) and the number already in its KV slot; each step feeds it the next run of tokens it has
not computed yet (a prompt chunk, or the one token it just sampled). Running sequences go first (each needs at
most one token once past its prompt, so decoding never stalls); unfinished prompts continue with what is left of
the token budget; waiting requests are admitted while a slot is free and budget remains, first come first served.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from herd.serve.engine.text import Detokenizer, StopStrings
from herd.serve.engine.types import RequestOutput, SamplingParams


@dataclass(eq=False)  # identity: the queues look sequences up by object
class Sequence:
    """One request's state inside the engine."""

    request_id: str
    prompt: list[int]
    params: SamplingParams
    sink: Callable[[RequestOutput], None]
    stop_ids: frozenset[int]
    max_tokens: int  # 0: score only (prefill, no generation)
    generator: torch.Generator | None = None
    detok: Detokenizer | None = None
    stops: StopStrings | None = None
    slot: int = -1
    computed: int = 0  # tokens whose keys/values are in the slot
    output: list[int] = field(default_factory=list)
    prompt_logprobs: list[float | None] | None = None
    prompt_top: list[dict[int, float] | None] | None = None
    prompt_greedy: list[bool | None] | None = None
    prompt_sent: bool = False
    arrival: float = field(default_factory=time.perf_counter)
    first_token: float | None = None

    @property
    def num_tokens(self) -> int:
        return len(self.prompt) + len(self.output)

    def token_at(self, i: int) -> int:
        n = len(self.prompt)
        return self.prompt[i] if i < n else self.output[i - n]

    def pending(self) -> int:
        """Tokens not yet in the KV slot (the prompt's rest, or 1 after sampling)."""
        return self.num_tokens - self.computed


@dataclass
class ScheduledRow:
    seq: Sequence
    n: int  # tokens fed this step: positions seq.computed .. seq.computed + n - 1

    @property
    def completes(self) -> bool:
        """Feeds the sequence's last known token: its logits pick the next token."""
        return self.seq.computed + self.n == self.seq.num_tokens


class Scheduler:
    """Waiting queue, slot assignment and the per-step token budget."""

    def __init__(self, num_slots: int, token_budget: int):
        self.token_budget = token_budget
        self.free = list(range(num_slots))[::-1]  # pop() hands out the lowest slot: live slots stay dense
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[ScheduledRow]:
        budget = self.token_budget
        rows: list[ScheduledRow] = []
        prefilling: list[Sequence] = []
        for seq in self.running:
            if seq.pending() == 1:
                rows.append(ScheduledRow(seq, 1))
                budget -= 1
            else:
                prefilling.append(seq)
        for seq in prefilling:
            if budget <= 0:
                break
            n = min(seq.pending(), budget)
            rows.append(ScheduledRow(seq, n))
            budget -= n
        while self.waiting and self.free and budget > 0:
            seq = self.waiting.popleft()
            seq.slot = self.free.pop()
            self.running.append(seq)
            n = min(seq.pending(), budget)
            rows.append(ScheduledRow(seq, n))
            budget -= n
        return rows

    def remove(self, seq: Sequence) -> None:
        """Retire a sequence: its slot goes back to the pool (the stale keys are overwritten by the next user)."""
        if seq in self.running:
            self.running.remove(seq)
            self.free.append(seq.slot)
            self.free.sort(reverse=True)
            seq.slot = -1
        elif seq in self.waiting:
            self.waiting.remove(seq)
