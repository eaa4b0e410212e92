"""ShardReader: stream packed parquet shards to a trainer, per (rank, world_size), resumable exactly.

A packed artifact (written by `herd.data.pack`) is a directory of parquet shards plus `index.json`
(shard files, row counts, seq_len, tile size). Each row is one sequence of seq_len + 1 tokens:
`input_ids` list<int32>, `loss_mask` list<uint8>, and for image rows `pixel_values` (float32, flattened
(3, tile, tile) tiles) with `n_tiles`. Trainers take `x = ids[:, :-1]`, `y = ids[:, 1:]`, `mask = loss_mask[:, 1:]`.

    reader = ShardReader(ctx.inputs["data.pack_pretrain"].local_path(), batch_size=8, rank=r, world_size=w)
    for step, batch in zip(range(steps), reader):
        batch["input_ids"]        # (B, seq_len + 1) int64
        batch["loss_mask"]        # (B, seq_len + 1) uint8, 1 where the token is a target
        batch["pixel_values"]     # image shards only: (sum(n_tiles), 3, tile, tile) float32, row-major tile order
        batch["n_tiles"]          # image shards only: (B,) int64
    state = reader.state_dict()   # save with the checkpoint; ShardReader(...).load_state_dict(state) resumes
                                  # at the very next row the interrupted run would have read

Order. Each epoch visits the shards in a seeded permutation, cut into windows of `shuffle_window` shards, and
the rows of a window in one seeded permutation (all derived from (seed, epoch), so nothing random needs saving).
Packing keeps the corpus order, and corpora come grouped by source (the synthetic one writes biographies, then
arithmetic, then prose): a shuffle inside each shard alone trained the tiny models on one family after another,
its loss jumping from 0.78 to 3.3 when the prose shard came up. A window mixes the rows of several shards
while holding only those shards in memory. That epoch stream is dealt round-robin to
ranks (row g goes to rank g % world_size) and cut to the same length on every rank, so all ranks take the
same number of steps (a DDP requirement). With `loop=True` (the default) epochs follow each other without a
partial batch; with `loop=False` iteration stops at the end of the epoch and the last batch may be short
(dropped when `drop_last=True`). Each rank reads every shard it needs in full (shards are a few MB); the
reader keeps the decoded shards of one window in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from herd.data.pack import INDEX_FILE

_STATE_VERSION = 1


class ShardReaderError(ValueError):
    """A packed artifact that cannot be read, or a state_dict that does not belong to this reader."""


def _fs_and_path(uri: str, storage_options: dict[str, Any] | None) -> tuple[Any, str]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(str(uri), **(storage_options or {}))
    return fs, path.rstrip("/")


def read_index(uri: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the packed artifact's index (shards with row counts, seq_len, tile_size, token counts)."""
    fs, root = _fs_and_path(uri, storage_options)
    index_path = f"{root}/{INDEX_FILE}"
    if fs.exists(index_path):
        with fs.open(index_path, "r") as f:
            index = json.load(f)
    else:
        files = sorted(p for p in fs.find(root) if p.endswith(".parquet"))
        if not files:
            raise ShardReaderError(
                f"no parquet shards under {uri!r}: pass the directory of a packed artifact "
                "(the output of the data flow's pack step)"
            )
        shards = []
        for p in files:
            with fs.open(p, "rb") as f:
                shards.append({"file": p[len(root) + 1 :], "rows": pq.ParquetFile(f).metadata.num_rows})
        index = {"shards": shards}
    if not index.get("shards"):
        raise ShardReaderError(f"packed artifact {uri!r} lists no shards in {INDEX_FILE}")
    return index


class ShardReader:
    """Deterministic, resumable batches of packed sequences for one rank (see the module docstring)."""

    def __init__(
        self,
        uri: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        loop: bool = True,
        drop_last: bool = False,
        shuffle_window: int = 8,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ShardReaderError(f"batch_size must be >= 1, got {batch_size}")
        if shuffle_window < 1:
            raise ShardReaderError(f"shuffle_window must be >= 1 shard, got {shuffle_window}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ShardReaderError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.uri = str(uri)
        self.batch_size = batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle, self.loop, self.drop_last = seed, shuffle, loop, drop_last
        self.shuffle_window = shuffle_window
        self._fs, self._root = _fs_and_path(self.uri, storage_options)
        self.index = read_index(self.uri, storage_options)
        self._shards: list[dict[str, Any]] = [s for s in self.index["shards"] if s["rows"] > 0]
        self.num_rows = sum(s["rows"] for s in self._shards)
        self.rows_per_rank = self.num_rows // world_size
        if self.rows_per_rank == 0:
            raise ShardReaderError(
                f"{self.uri!r} holds {self.num_rows} rows, fewer than world_size={world_size}: "
                "pack more data or use fewer ranks"
            )
        self.seq_len: int | None = self.index.get("seq_len")
        self.tile_size: int | None = self.index.get("tile_size")
        # Position: the epoch and how many of this rank's rows of that epoch were already yielded.
        self.epoch = 0
        self.consumed = 0
        self._cache: dict[int, dict[str, Any]] = {}  # decoded shards of the current window
        self._plan_cache: tuple[int, list[np.ndarray], np.ndarray, dict[int, np.ndarray]] | None = None

    # ---- order -------------------------------------------------------------------------------------------
    def _rng(self, *keys: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, *keys])

    def _shard_order(self, epoch: int) -> np.ndarray:
        n = len(self._shards)
        return self._rng(epoch, 0).permutation(n) if self.shuffle else np.arange(n)

    def _window_order(self, epoch: int, window: int, n: int) -> np.ndarray:
        return self._rng(epoch, 1, window).permutation(n) if self.shuffle else np.arange(n)

    @property
    def steps_per_epoch(self) -> int:
        """Full batches per epoch on this rank (the same on every rank)."""
        return self.rows_per_rank // self.batch_size

    def _plan(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The windows of `epoch` (shard ids each) and the cumulative row counts along them (cached)."""
        if self._plan_cache is None or self._plan_cache[0] != epoch:
            order = self._shard_order(epoch)
            windows = [order[i:i + self.shuffle_window] for i in range(0, len(order), self.shuffle_window)]
            ends = np.cumsum([sum(self._shards[i]["rows"] for i in w) for w in windows])
            self._plan_cache = (epoch, windows, ends, {})
        return self._plan_cache[1], self._plan_cache[2]

    def _locate(self, epoch: int, k: int) -> tuple[int, int]:
        """Map this rank's k-th row of `epoch` to (shard id, row inside the shard)."""
        g = self.rank + k * self.world_size  # position in the epoch stream
        windows, ends = self._plan(epoch)
        pos = int(np.searchsorted(ends, g, side="right"))
        offset = g - (int(ends[pos - 1]) if pos else 0)
        perms = self._plan_cache[3]
        if pos not in perms:
            perms.clear()  # one window's permutation at a time: the stream only moves forward
            perms[pos] = self._window_order(epoch, pos, int(ends[pos] - (ends[pos - 1] if pos else 0)))
        j = int(perms[pos][offset])
        for shard_id in windows[pos]:  # j-th row of the window, counting through its shards in window order
            n = self._shards[int(shard_id)]["rows"]
            if j < n:
                return int(shard_id), j
            j -= n
        raise AssertionError("window row out of range")  # unreachable: j < the window's row count

    # ---- reading -----------------------------------------------------------------------------------------
    def _load(self, shard_id: int) -> dict[str, Any]:
        """Decode one shard into (flat values, offsets) numpy pairs; the window's shards stay cached."""
        if shard_id in self._cache:
            return self._cache[shard_id]
        path = f"{self._root}/{self._shards[shard_id]['file']}"
        with self._fs.open(path, "rb") as f:
            table = pq.read_table(f)
        if "input_ids" not in table.column_names or "loss_mask" not in table.column_names:
            raise ShardReaderError(f"shard {path!r} lacks input_ids/loss_mask columns: not a packed shard")
        cols: dict[str, Any] = {}
        for name in ("input_ids", "loss_mask", "pixel_values"):
            if name in table.column_names:
                arr = table.column(name).combine_chunks()
                cols[name] = (arr.values.to_numpy(zero_copy_only=False), arr.offsets.to_numpy())
        if "n_tiles" in table.column_names:
            cols["n_tiles"] = table.column("n_tiles").to_numpy()
        if len(self._cache) >= self.shuffle_window:  # the window moved on: its oldest shard is done
            self._cache.pop(next(iter(self._cache)))
        self._cache[shard_id] = cols
        return cols

    @staticmethod
    def _row_values(col: tuple[np.ndarray, np.ndarray], row: int) -> np.ndarray:
        values, offsets = col
        return values[offsets[row] : offsets[row + 1]]

    def _next_rows(self, count: int) -> list[tuple[int, int, int]]:
        """Advance the position by up to `count` rows; return (epoch, shard id, row) for each."""
        out: list[tuple[int, int, int]] = []
        while len(out) < count:
            if self.consumed >= self.rows_per_rank:
                if not self.loop:
                    break
                self.epoch += 1
                self.consumed = 0
            shard_id, row = self._locate(self.epoch, self.consumed)
            out.append((self.epoch, shard_id, row))
            self.consumed += 1
        return out

    def _collate(self, picks: list[tuple[int, int, int]]) -> dict[str, torch.Tensor]:
        ids, masks, pixels, tiles = [], [], [], []
        for epoch, shard_id, row in picks:
            cols = self._load(shard_id)
            ids.append(self._row_values(cols["input_ids"], row))
            masks.append(self._row_values(cols["loss_mask"], row))
            if "pixel_values" in cols:
                pixels.append(self._row_values(cols["pixel_values"], row).astype(np.float32, copy=False))
                tiles.append(int(cols["n_tiles"][row]))
        batch = {
            "input_ids": torch.from_numpy(np.stack(ids).astype(np.int64)),
            "loss_mask": torch.from_numpy(np.stack(masks).astype(np.uint8)),
        }
        if pixels:
            tile = self.tile_size or round((len(pixels[0]) / max(tiles[0], 1) / 3) ** 0.5)
            flat = np.concatenate(pixels)
            batch["pixel_values"] = torch.from_numpy(flat).reshape(-1, 3, tile, tile)
            batch["n_tiles"] = torch.tensor(tiles, dtype=torch.int64)
        return batch

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while True:
            if not self.loop and self.consumed >= self.rows_per_rank:
                # The epoch is finished; the next iteration (a new `for` loop) starts the next epoch.
                self.epoch += 1
                self.consumed = 0
                return
            picks = self._next_rows(self.batch_size)
            if not picks or (self.drop_last and len(picks) < self.batch_size):
                continue
            yield self._collate(picks)

    # ---- resume -----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The position after the last yielded batch (plain ints, JSON-serializable)."""
        shard, row = (-1, -1)
        if self.consumed < self.rows_per_rank:
            shard, row = self._locate(self.epoch, self.consumed)
        return {
            "version": _STATE_VERSION,
            "epoch": self.epoch,
            "consumed": self.consumed,
            "next_shard": shard,
            "next_row": row,
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_rows": self.num_rows,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume at the position saved by `state_dict()` of a reader over the same data and layout."""
        expect = {
            "seed": self.seed,
            "shuffle": self.shuffle,
            "rank": self.rank,
            "world_size": self.world_size,
            "num_rows": self.num_rows,
        }
        wrong = {k: (state.get(k), v) for k, v in expect.items() if state.get(k) != v}
        if wrong:
            raise ShardReaderError(
                "reader state does not match this reader (saved, current): "
                + ", ".join(f"{k}={a!r} vs {b!r}" for k, (a, b) in wrong.items())
                + "; resume with the same data, seed, shuffle, rank and world_size"
            )
        self.epoch = int(state["epoch"])
        self.consumed = int(state["consumed"])
        self._plan_cache = None
