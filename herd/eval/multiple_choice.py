"""Multiple-choice suite: 4 options per knowledge question, scored by each option's log-likelihood.

    r = evaluate_multiple_choice(lm, read_items(evalset, "multiple_choice"))
    r.metrics["acc"], r.metrics["acc_norm"], r.extra["chance"]       # chance = 0.25

``acc`` picks the option with the highest summed log-probability; ``acc_norm`` divides it by the option's
length in characters first (lm-eval's definitions, so herd and lm-eval agree on the same items). Context and
option are tokenized as lm-eval does: the whole string is encoded and the context's tokens split off, with a
trailing space of the context moved to the option. Chat-tuned models get the chat template's generation
prompt as context and the bare option as their answer.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from herd.eval.lm import HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import wilson


def encode_pair(lm: HerdLM, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: encode context+continuation whole, split after the context's tokens."""
    n_space = len(context) - len(context.rstrip())
    if n_space:
        context, continuation = context[:-n_space], context[-n_space:] + continuation
    whole = lm.encode(context + continuation)
    ctx = lm.encode(context)
    return ctx, whole[len(ctx):]


def evaluate_multiple_choice(lm: HerdLM, items: Sequence[dict[str, Any]], *, chat: bool = False,
                             confidence: float = 0.95) -> SuiteResult:
    t0 = time.perf_counter()
    requests = []
    contexts = lm.prompt_ids(items, chat=True) if chat else None
    for i, it in enumerate(items):
        for c in it["choices"]:
            if contexts is not None:  # after the assistant header the answer starts the turn: no space
                requests.append((contexts[i], lm.encode(c)))
            else:
                requests.append(encode_pair(lm, it["prompt"], " " + c))
    scores = lm.loglikelihood(requests)
    samples, acc, acc_norm = [], 0, 0
    pos = 0
    for it in items:
        k = len(it["choices"])
        ll = np.array([s for s, _ in scores[pos:pos + k]])
        pos += k
        lens = np.array([len(" " + c) for c in it["choices"]], dtype=np.float64)
        pick, pick_norm = int(ll.argmax()), int((ll / lens).argmax())
        ok, ok_norm = int(pick == it["gold"]), int(pick_norm == it["gold"])
        acc, acc_norm = acc + ok, acc_norm + ok_norm
        samples.append({"id": it["id"], "question": it["question"], "gold": it["gold"], "pred": pick,
                        "pred_norm": pick_norm, "loglik": [round(float(x), 4) for x in ll], "correct": ok,
                        "correct_norm": ok_norm})
    n = len(items)
    chance = float(np.mean([1 / len(it["choices"]) for it in items])) if items else 0.0
    return SuiteResult("multiple_choice", {"acc": wilson(acc, n, confidence), "acc_norm": wilson(acc_norm, n, confidence)},
                       primary="acc", samples=samples, seconds=time.perf_counter() - t0,
                       extra={"chance": chance, "prompt": "chat" if chat else "completion"})


__all__ = ["encode_pair", "evaluate_multiple_choice"]
