"""Test corpora for the data tests: a jsonl source full of broken rows and a parquet source, with the exact
per-reason reject counts they must produce."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from herd.data.synthetic.needles import prose


def good_docs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [prose(90, rng) for _ in range(n)]


def write_broken_jsonl(path: Path, seed: int = 1) -> dict[str, int]:
    """10 good docs, 1 good chat and 16 bad rows; returns the expected counts."""
    docs = good_docs(10, seed=seed)
    words = docs[2].split()
    near_changed = " ".join(words[:40] + ["zebra"] + words[41:])  # one word replaced
    near_dropped = " ".join(words[:50] + words[51:])  # one word removed
    lines: list[bytes] = [json.dumps({"text": d}).encode() for d in docs]
    lines += [
        b'{"text": "unterminated',  # invalid_json
        b"[1, 2, 3]",  # invalid_json (not an object)
        b"\xff\xfe\x00\x81 binary junk \xc3\x28",  # undecodable
        json.dumps({"text": ""}).encode(),  # empty
        json.dumps({"text": "   \n  "}).encode(),  # empty
        json.dumps({"body": "no text field here"}).encode(),  # missing_field
        json.dumps({"text": "x" * 5_000_000}).encode(),  # too_long: a 5 MB single line
        json.dumps({"text": "hi"}).encode(),  # too_short
        json.dumps(
            {"text": "#### $$$$ 1234 5678 !!!! ???? %%%% ^^^^ &&&& **** 9999"}
        ).encode(),  # low_quality
        json.dumps({"text": docs[0]}).encode(),  # exact_dup
        json.dumps({"text": docs[0]}).encode(),  # exact_dup
        json.dumps(
            {"text": "  " + docs[1].replace("\n", "\r\n") + " \n"}
        ).encode(),  # exact_dup after normalization
        json.dumps({"text": near_changed}).encode(),  # near_dup
        json.dumps({"text": near_dropped}).encode(),  # near_dup
        json.dumps(
            {"messages": [{"role": "user", "content": "hi"}]}
        ).encode(),  # invalid_messages (no assistant)
        json.dumps({"messages": [{"role": "robot", "content": "x"}]}).encode(),  # invalid_messages (bad role)
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": f"Say hi {seed} times."},
                    {"role": "assistant", "content": "Hi!"},
                ]
            }
        ).encode(),
        b"",  # a blank line is layout, not a row
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return {
        "rows_read": 27,
        "documents": 10,
        "chats": 1,
        "invalid_json": 2,
        "undecodable": 1,
        "empty": 2,
        "missing_field": 1,
        "too_long": 1,
        "too_short": 1,
        "low_quality": 1,
        "exact_dup": 3,
        "near_dup": 2,
        "invalid_messages": 2,
    }


def write_parquet_source(path: Path, dup_of: str, seed: int = 2) -> dict[str, int]:
    """3 good docs, a null text and a duplicate of a document from another source."""
    docs = good_docs(3, seed=seed)
    pq.write_table(pa.table({"text": [*docs, None, dup_of], "id": [1, 2, 3, 4, 5]}), path)
    return {"rows_read": 5, "documents": 3, "missing_field": 1, "exact_dup": 1}
