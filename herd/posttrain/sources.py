"""Users' own post-training data from fsspec sources: jsonl or parquet, local paths, globs or s3:// URIs.

    rows = read_rows(UserSource(uri="s3://bucket/chats/*.jsonl"), storage_options)
    sft_user_examples(src, so)     # rows {messages: [...]}                    -> Example (loss-only judging)
    rl_user_prompts(src, so)       # rows {prompt: str | messages, answer}     -> Prompt (reward: src.reward)
    user_pairs(src, so)            # rows {prompt: str | messages, chosen, rejected}

A row missing a required field fails with the file and row number and the fields it needs.
"""

from __future__ import annotations

import json
from typing import Any

from herd.posttrain.config import UserSource
from herd.posttrain.data import Example, stable_id
from herd.posttrain.rewards import Prompt


def read_rows(src: UserSource, storage_options: dict[str, Any] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(origin 'file#row', row) for every row of every file the URI (or glob) names."""
    import fsspec

    files = fsspec.open_files(src.uri, "rb", **(storage_options or {}))
    if not files:
        raise FileNotFoundError(f"post-training source {src.uri!r} matches no file")
    out: list[tuple[str, dict[str, Any]]] = []
    for f in files:
        fmt = src.format if src.format != "auto" else ("parquet" if f.path.endswith(".parquet") else "jsonl")
        with f as fh:
            if fmt == "parquet":
                import pyarrow.parquet as pq

                rows = pq.read_table(fh).to_pylist()
            else:
                rows = [json.loads(line) for line in fh.read().decode("utf-8").splitlines() if line.strip()]
        out += [(f"{f.path}#{i}", r) for i, r in enumerate(rows)]
    return out


def _need(row: dict[str, Any], origin: str, fields: tuple[str, ...]) -> None:
    missing = [k for k in fields if k not in row]
    if missing:
        raise ValueError(f"{origin}: row lacks {missing}; rows need {list(fields)}")


def _messages(prompt: Any) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def sft_user_examples(src: UserSource, so: dict[str, Any] | None = None) -> list[Example]:
    out = []
    for origin, row in read_rows(src, so):
        _need(row, origin, ("messages",))
        msgs = row["messages"] if isinstance(row["messages"], list) else json.loads(row["messages"])
        if not any(m.get("role") == "assistant" for m in msgs):
            raise ValueError(f"{origin}: an SFT conversation needs an assistant turn to train on")
        out.append(Example(stable_id("user-sft", msgs), msgs, src.capability, None, {"origin": origin}))
    return out


def rl_user_prompts(src: UserSource, so: dict[str, Any] | None = None) -> list[Prompt]:
    out = []
    for origin, row in read_rows(src, so):
        _need(row, origin, ("prompt",) if src.reward else ("prompt", "answer"))
        msgs = _messages(row["prompt"])
        out.append(Prompt(stable_id("user-rl", [msgs, row.get("answer")]), msgs, str(row.get("answer", "")),
                          src.capability, src.reward, {k: v for k, v in row.items() if k != "prompt"}))
    return out


def user_pairs(src: UserSource, so: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for origin, row in read_rows(src, so):
        _need(row, origin, ("prompt", "chosen", "rejected"))
        out.append({"prompt": _messages(row["prompt"]), "chosen": str(row["chosen"]),
                    "rejected": str(row["rejected"]), "kind": src.capability})
    return out


__all__ = ["read_rows", "rl_user_prompts", "sft_user_examples", "user_pairs"]
