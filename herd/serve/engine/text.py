"""Incremental detokenization and stop strings, per sequence (vLLM's scheme).

Decoding the whole output every token is O(n²); decoding from a short prefix window and taking what it adds is
O(1) per token and keeps byte-level BPE merges right. Text ending in U+FFFD (an incomplete UTF-8 character) is
held back until the next token completes it, so streamed deltas never split a character. Stop strings are
searched only in the tail the new text can touch; while streaming, a tail that could still become a stop string
is held back too, so a stop string never reaches the client.
"""

from __future__ import annotations

from typing import Any


class Detokenizer:
    """Turns one sequence's generated token ids into text, a delta at a time."""

    def __init__(self, tokenizer: Any, prompt: list[int], skip_special_tokens: bool):
        self.tok = tokenizer
        self.skip = skip_special_tokens
        # start the window inside the prompt so the first generated token decodes with its left context
        self.ids: list[int] = list(prompt[-4:])
        self.prefix = 0
        self.read = len(self.ids)

    def add(self, token_id: int) -> str:
        """Append a token; return the text it completes (possibly empty)."""
        self.ids.append(token_id)
        before = self.tok.decode(self.ids[self.prefix : self.read], skip_special_tokens=self.skip)
        after = self.tok.decode(self.ids[self.prefix :], skip_special_tokens=self.skip)
        if after.endswith("\ufffd") or len(after) <= len(before):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]


class StopStrings:
    """Accumulates a sequence's text; finds stop strings and decides how much text may be released."""

    def __init__(self, stops: list[str], include_stop: bool):
        self.stops = stops
        self.include = include_stop
        self.longest = max((len(s) for s in stops), default=0)
        self.text = ""
        self.released = 0

    def add(self, delta: str) -> tuple[str, str | None]:
        """Add new text; return (text now safe to release, the stop string that fired or None)."""
        if not delta:
            return "", None
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        if self.stops:
            hit: tuple[int, str] | None = None
            for s in self.stops:
                i = self.text.find(s, start)
                if i != -1 and (hit is None or i < hit[0]):
                    hit = (i, s)
            if hit is not None:
                end = hit[0] + (len(hit[1]) if self.include else 0)
                self.text = self.text[:end]
                return self._release(len(self.text)), hit[1]
        return self._release(len(self.text) - self._held()), None

    def flush(self) -> str:
        """The held-back tail, once the sequence ends for another reason."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest tail of the text that is a proper prefix of some stop string."""
        for n in range(min(self.longest - 1, len(self.text)), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _release(self, upto: int) -> str:
        upto = max(upto, self.released)
        out = self.text[self.released : upto]
        self.released = upto
        return out
