"""Knowledge QA suite: closed-book questions on held-out entities, exact match on the normalized answer.

    r = evaluate_knowledge(lm, read_items(evalset, "knowledge"), chat=False)
    r.metrics["exact_match"]            # Score with a Wilson interval

Base models get the completion prompt of the pretraining text (``Question: ...\\nAnswer:``) and are read up to
the first newline; chat-tuned models get the chat template and are read to their end-of-turn. ``contains``
(the normalized answer appears as whole words in the output) is reported beside it, as chat models answer in
sentences ("She was born in 1961.").
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Sequence
from typing import Any

from herd.eval.lm import EOT_IDS, HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import wilson

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """SQuAD-style answer normalization: lowercase, no punctuation, no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(_PUNCT)).split())


def first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def evaluate_knowledge(lm: HerdLM, items: Sequence[dict[str, Any]], *, chat: bool = False,
                       max_new_tokens: int = 16, confidence: float = 0.95) -> SuiteResult:
    t0 = time.perf_counter()
    prompts = lm.prompt_ids(items, chat)
    gens = lm.generate(prompts, max_new_tokens=max_new_tokens, stop_tokens=EOT_IDS if chat else lm.line_stops)
    samples, em, contains = [], 0, 0
    for it, g in zip(items, gens, strict=True):
        pred = first_line(lm.decode(g))
        gold, got = normalize(it["answer"]), normalize(pred)
        hit, inside = int(got == gold), int(f" {gold} " in f" {got} ")
        em, contains = em + hit, contains + inside
        samples.append({"id": it["id"], "question": it["question"], "answer": it["answer"], "prediction": pred,
                        "correct": hit, "contains": inside})
    n = len(items)
    return SuiteResult("knowledge", {"exact_match": wilson(em, n, confidence),
                                     "contains": wilson(contains, n, confidence)},
                       primary="exact_match", samples=samples, seconds=time.perf_counter() - t0,
                       extra={"prompt": "chat" if chat else "completion"})


__all__ = ["evaluate_knowledge", "first_line", "normalize"]
