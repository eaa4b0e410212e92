"""lm-eval helpers of herd's task YAMLs: load the eval set's jsonl (no downloads) and score like herd does.

The YAMLs name these with ``!function utils.<name>``; lm-eval passes the TaskManager's ``metadata`` to
``custom_dataset`` loaders, so ``herd.eval.harness`` gives ``metadata={"evalset": "/abs/eval/set/dir"}``.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_INT = re.compile(r"-?\d+")


def _load(name: str, evalset: str | None = None, limit: int | None = None, **_: Any) -> dict[str, Any]:
    import datasets

    if not evalset:
        raise ValueError("herd's lm-eval tasks need metadata={'evalset': <eval set dir>} (herd.eval.harness sets it)")
    path = Path(evalset) / name
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = rows[:limit] if limit else rows
    # lists and mixed types survive as JSON strings; the YAMLs only use flat fields (and choices, a list of str)
    return {"test": datasets.Dataset.from_list([{k: v for k, v in r.items() if k != "image"} for r in rows])}


def load_multiple_choice(**kw: Any) -> dict[str, Any]:
    return _load("multiple_choice.jsonl", **kw)


def load_arithmetic(**kw: Any) -> dict[str, Any]:
    return _load("arithmetic.jsonl", **kw)


def load_knowledge(**kw: Any) -> dict[str, Any]:
    return _load("knowledge.jsonl", **kw)


def load_needle(**kw: Any) -> dict[str, Any]:
    return _load("needle.jsonl", **kw)


def _first_line(text: str) -> str:
    return text.strip().split("\n", 1)[0].strip()


def _normalize(text: str) -> str:
    return " ".join(_ARTICLES.sub(" ", text.lower().translate(str.maketrans("", "", string.punctuation))).split())


def process_arithmetic(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    """herd's check: the last integer of the first line equals the answer."""
    found = _INT.findall(_first_line(results[0]).replace(",", ""))
    return {"exact_match": float(bool(found) and int(found[-1]) == int(doc["answer"]))}


def process_knowledge(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"exact_match": float(_normalize(_first_line(results[0])) == _normalize(doc["answer"]))}


def process_needle(doc: dict[str, Any], results: list[str]) -> dict[str, float]:
    return {"niah_acc": float(doc["answer"] in results[0])}
