"""Fixtures of the train tests: small packed shards (tests/train/train_helpers.py) and a tiny LM."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_helpers import TinyLM, write_shards


@pytest.fixture(scope="session")
def shards(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("packed")
    return {"train": write_shards(root / "train", rows=512, seq_len=32, vocab=64, seed=0),
            "val": write_shards(root / "val", rows=64, seq_len=32, vocab=64, seed=1)}


@pytest.fixture
def tiny_lm() -> type[TinyLM]:
    return TinyLM
