"""Helpers of the train tests: packed shards in the data contract's schema, and a tiny LM (no herd.model)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import nn


def write_shards(root: Path, *, rows: int, seq_len: int, vocab: int, seed: int, n_shards: int = 2) -> Path:
    """Packed shards (input_ids list<int32>, loss_mask list<uint8>, index.json) of a learnable language:
    each row counts upward from a random start with a random stride (mod vocab), so the next token is
    predictable from the previous two."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    shards = []
    per = rows // n_shards
    for s in range(n_shards):
        start = rng.integers(13, vocab, size=(per, 1))
        stride = rng.integers(1, 4, size=(per, 1))
        ids = (13 + (start - 13 + stride * np.arange(seq_len + 1)) % (vocab - 13)).astype(np.int32)
        mask = np.ones_like(ids, dtype=np.uint8)
        mask[:, :2] = 0  # the first targets are not predictable: keep them out of the loss
        table = pa.table({"input_ids": pa.array(list(ids), pa.list_(pa.int32())),
                          "loss_mask": pa.array(list(mask), pa.list_(pa.uint8()))})
        name = f"shard-{s:05d}.parquet"
        pq.write_table(table, root / name)
        shards.append({"file": name, "rows": per})
    (root / "index.json").write_text(json.dumps({"shards": shards, "seq_len": seq_len}))
    return root


class TinyLM(nn.Module):
    """Bigram-plus-previous-token LM: enough to learn the shards' language, cheap on one core."""

    def __init__(self, vocab: int = 64, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.prev = nn.Embedding(vocab, width)
        self.mix = nn.Linear(2 * width, width)
        self.head = nn.Linear(width, vocab)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        prev = torch.roll(x, 1, dims=1)
        h = torch.cat([self.embed(x), self.prev(prev)], -1)
        return self.head(torch.relu(self.mix(h)))


def tiny_lm_factory(cfg: dict) -> nn.Module:
    """TrainJob.model_factory for TinyLM (seeded, so every rank and every run starts from the same init)."""
    torch.manual_seed(cfg.get("seed", 0))
    return TinyLM(vocab=64, width=32)
