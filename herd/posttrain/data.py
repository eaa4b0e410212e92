"""Post-training examples and the resumable data sources the trainer reads them through.

    exs = sft_examples(corpus_dir)                       # SFT conversations with an id, capability and answer
    rows = encode_sft(tok, [e.messages for e in kept], max_len=257)   # (ids, mask): assistant tokens + <|eot|>
    src = RowSource(rows, micro_batch=16, rank=0, world=2, seed=0)    # the trainer's data: padded micro-batches
    src = PairSource(pairs, micro_batch=8, rank=0, world=2, seed=0)   # DPO: whole pairs, chosen rows first

One conversation per row, padded to the longest row of its micro-batch and never packed with another, so
conversations cannot attend to each other and every one starts at position 0 (TRL's default packing=False;
nanochat pads rather than crops). Tiny chats are ~40-80 tokens, so padding to the batch's longest costs little.
Sources follow the trainer's Resumable protocol (iter, state_dict, load_state_dict): a resumed run reads the
same micro-batches as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from herd.data.tokenizer import PAD_ID, encode_chat_batch, render_chat

_ARITH = re.compile(r"The answer is (-?\d+)\.\s*$")


@dataclass
class Example:
    """One SFT conversation; the judge grades its last assistant turn given everything before it."""

    example_id: str
    messages: list[dict[str, Any]]
    capability: str  # arithmetic | knowledge | chat | <user tag>
    answer: str | None  # reference answer of a verifiable turn (None: loss-only judging)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def prompt(self) -> list[dict[str, Any]]:
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return self.messages[:last]

    @property
    def reference(self) -> str:
        last = max(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return str(self.messages[last]["content"])


def stable_id(prefix: str, obj: Any) -> str:
    return f"{prefix}-{hashlib.sha1(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]}"


def classify(messages: list[dict[str, Any]], small_talk: set[str] | None = None) -> tuple[str, str | None]:
    """(capability, verifiable answer) of a conversation's last assistant turn (herd's synthetic chats)."""
    from herd.data.synthetic.chat import SMALL_TALK

    small = small_talk if small_talk is not None else {q for q, _ in SMALL_TALK}
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ref, question = str(messages[last]["content"]), str(messages[last - 1]["content"]) if last else ""
    m = _ARITH.search(ref)
    if m:
        return "arithmetic", m.group(1)
    if question in small:
        return "chat", None
    return "knowledge", ref.rstrip(".")


def sft_examples(corpus_dir: str | Path) -> list[Example]:
    """SFT conversations of a cleaned corpus (chats.parquet), with capability tags and verifiable answers."""
    import pyarrow.parquet as pq

    path = Path(corpus_dir) / "chats.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: the data flow's clean step writes it (run `herd flow data`)")
    out: list[Example] = []
    for batch in pq.ParquetFile(path).iter_batches(columns=["messages"], batch_size=4096):
        for raw in batch.column("messages").to_pylist():
            msgs = json.loads(raw)
            if not any(m.get("role") == "assistant" for m in msgs):
                continue
            cap, ans = classify(msgs)
            out.append(Example(stable_id("sft", msgs), msgs, cap, ans))
    return out


def encode_prompt(tok: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of a chat prompt ending in the assistant header (what the model completes)."""
    return tok.encode(render_chat(messages, add_generation_prompt=True), add_special_tokens=False).ids


def encode_sft(tok: Any, conversations: Sequence[Sequence[dict[str, Any]]], max_len: int
               ) -> list[tuple[list[int], list[int]]]:
    """(ids, loss mask) per conversation, truncated to max_len tokens; the mask covers assistant tokens and
    their <|eot|> (the stop decision is trained: TRL #1623)."""
    return [(ids[:max_len], mask[:max_len]) for ids, mask in encode_chat_batch(tok, conversations)]


def pad_rows(rows: Sequence[tuple[Sequence[int], Sequence[int]]]) -> dict[str, torch.Tensor]:
    """Right-pad (ids, mask) rows to the longest: input_ids (B, L) long, loss_mask (B, L) float."""
    L = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), L), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), L))
    for b, (i, m) in enumerate(rows):
        ids[b, : len(i)] = torch.as_tensor(list(i))
        mask[b, : len(m)] = torch.as_tensor(list(m), dtype=torch.float32)
    return {"input_ids": ids, "loss_mask": mask}


class _EpochOrder:
    """Seeded per-epoch permutation, split over ranks; position = (epoch, micro-batches taken)."""

    def __init__(self, n: int, micro_batch: int, rank: int, world: int, seed: int) -> None:
        if n < micro_batch * world:
            raise ValueError(f"{n} examples cannot fill one micro-batch of {micro_batch} on each of {world} "
                             "workers: lower micro_batch_size or add data")
        self.n, self.mb, self.rank, self.world, self.seed = n, micro_batch, rank, world, seed
        self.epoch, self.taken = 0, 0
        self.per_epoch = n // (micro_batch * world)

    def next_indices(self) -> list[int]:
        if self.taken >= self.per_epoch:
            self.epoch, self.taken = self.epoch + 1, 0
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
        start = (self.taken * self.world + self.rank) * self.mb
        self.taken += 1
        return order[start:start + self.mb].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "taken": self.taken}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.epoch, self.taken = int(s["epoch"]), int(s["taken"])


class RowSource:
    """SFT rows (one conversation each) as padded micro-batches, endless (epoch after epoch)."""

    def __init__(self, rows: list[tuple[list[int], list[int]]], micro_batch: int, *, rank: int, world: int,
                 seed: int) -> None:
        self.rows = rows
        self.order = _EpochOrder(len(rows), micro_batch, rank, world, seed)
        self.seq_len = max(len(r[0]) for r in rows) - 1

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            yield pad_rows([self.rows[i] for i in self.order.next_indices()])

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


class PairSource:
    """DPO pairs as micro-batches of 2B rows (chosen 1..B, then rejected 1..B) with `ref_logp` (2B,): a pair is
    never split across rows of different micro-batches or ranks."""

    def __init__(self, pairs: list[dict[str, Any]], micro_batch: int, *, rank: int, world: int, seed: int) -> None:
        self.pairs = pairs
        self.order = _EpochOrder(len(pairs), micro_batch, rank, world, seed)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            ps = [self.pairs[i] for i in self.order.next_indices()]
            rows = [(p["chosen_ids"], p["chosen_mask"]) for p in ps] + \
                   [(p["rejected_ids"], p["rejected_mask"]) for p in ps]
            batch = pad_rows(rows)
            batch["ref_logp"] = torch.tensor([p["ref_chosen"] for p in ps] + [p["ref_rejected"] for p in ps])
            yield batch

    def state_dict(self) -> dict[str, Any]:
        return self.order.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order.load_state_dict(state)


def write_jsonl(path: str | Path, rows: Sequence[dict[str, Any]]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def read_jsonl(uri: str, storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    import fsspec

    with fsspec.open(uri, "rt", encoding="utf-8", **(storage_options or {})) as f:
        return [json.loads(line) for line in f if line.strip()]


__all__ = ["Example", "PairSource", "RowSource", "classify", "encode_prompt", "encode_sft", "pad_rows",
           "read_jsonl", "sft_examples", "stable_id", "write_jsonl"]
