"""ShardReader: rank partitions are disjoint and complete, resume continues exactly, images collate."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from herd.data.pack import IMAGE_SCHEMA, TEXT_SCHEMA, ShardWriter
from herd.data.reader import ShardReader, ShardReaderError

SEQ = 9


def write_text_shards(path, rows=50, per_shard=8):
    w = ShardWriter(path, TEXT_SCHEMA, per_shard)
    ids = [[r] * SEQ for r in range(rows)]  # row r holds the token r everywhere: easy to identify
    w.add(pa.table({"input_ids": ids, "loss_mask": [[1] * SEQ] * rows}, schema=TEXT_SCHEMA))
    return w.close(kind="pretrain", seq_len=SEQ - 1)


def row_ids(batch) -> list[int]:
    return batch["input_ids"][:, 0].tolist()


def test_ranks_partition_each_epoch(tmp_path):
    index = write_text_shards(tmp_path)
    assert index["rows"] == 50 and [s["rows"] for s in index["shards"]] == [8] * 6 + [2]
    seen = []
    for rank in range(3):
        r = ShardReader(str(tmp_path), batch_size=4, rank=rank, world_size=3, seed=7, loop=False)
        got = [i for b in r for i in row_ids(b)]
        assert len(got) == 50 // 3
        seen.append(set(got))
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])
    assert len(set.union(*seen)) == 48  # two rows of the 50 fall off so every rank takes equal steps


def test_rows_of_a_window_of_shards_are_mixed(tmp_path):
    """Packed shards keep the corpus order (one family after another): the first rows of an epoch come from every
    shard of the window, not from one shard at a time."""
    write_text_shards(tmp_path, rows=64, per_shard=16)  # 4 shards: rows 0-15, 16-31, 32-47, 48-63
    first = [i for b in ShardReader(str(tmp_path), batch_size=8, seed=1, loop=False) for i in row_ids(b)][:16]
    assert len({i // 16 for i in first}) == 4  # one shard's worth of rows already holds all four shards
    per_shard = ShardReader(str(tmp_path), batch_size=8, seed=1, loop=False, shuffle_window=1)
    assert len({i // 16 for i in row_ids(next(iter(per_shard)))}) == 1
    windows = [i for b in ShardReader(str(tmp_path), batch_size=8, seed=1, loop=False, shuffle_window=2)
               for i in row_ids(b)]
    assert sorted(windows) == list(range(64))  # every row once per epoch, whatever the window
    assert len({i // 16 for i in windows[:32]}) == 2  # a window of two shards mixes those two


def test_resume_continues_exactly(tmp_path):
    write_text_shards(tmp_path)
    full = ShardReader(str(tmp_path), batch_size=5, rank=1, world_size=2, seed=3)
    it = iter(full)
    reference = [row_ids(next(it)) for _ in range(12)]  # crosses an epoch boundary (25 rows per rank)
    part = ShardReader(str(tmp_path), batch_size=5, rank=1, world_size=2, seed=3)
    it = iter(part)
    first = [row_ids(next(it)) for _ in range(4)]
    state = part.state_dict()
    resumed = ShardReader(str(tmp_path), batch_size=5, rank=1, world_size=2, seed=3)
    resumed.load_state_dict(state)
    it = iter(resumed)
    rest = [row_ids(next(it)) for _ in range(8)]
    assert first + rest == reference
    assert reference[0] != reference[5]  # epochs reshuffle
    assert (
        len({i for batch in reference[5:10] for i in batch}) == 25
    )  # a fresh epoch: 25 distinct rows, dealt anew
    with pytest.raises(ShardReaderError, match="world_size"):
        ShardReader(str(tmp_path), batch_size=5, rank=0, world_size=4, seed=3).load_state_dict(state)


def test_image_batches(tmp_path):
    w = ShardWriter(tmp_path, IMAGE_SCHEMA, 4)
    tiles = [np.full(3 * 8 * 8 * n, float(n), np.float32) for n in (1, 2, 1)]
    w.add(
        pa.table(
            {
                "input_ids": [[1] * SEQ] * 3,
                "loss_mask": [[0] * SEQ] * 3,
                "pixel_values": tiles,
                "n_tiles": [1, 2, 1],
            },
            schema=IMAGE_SCHEMA,
        )
    )
    w.close(kind="images", seq_len=SEQ - 1, tile_size=8)
    b = next(iter(ShardReader(str(tmp_path), batch_size=3, shuffle=False)))
    assert b["pixel_values"].shape == (4, 3, 8, 8) and b["n_tiles"].tolist() == [1, 2, 1]
    assert b["input_ids"].dtype == torch.int64 and b["loss_mask"].dtype == torch.uint8
    assert b["pixel_values"][1:3].eq(2.0).all()


def test_empty_or_wrong_directory(tmp_path):
    with pytest.raises(ShardReaderError, match="no parquet shards"):
        ShardReader(str(tmp_path), batch_size=2)
