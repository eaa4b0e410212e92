"""Tokenize and pack with Ray Data into fixed-length parquet shards (the schema of docs/architecture.md).

    stats = pack_corpus(corpus_dir, tokenizer_dir, cfg.packing, {"pretrain": d1, "pretrain_val": d2,
                        "sft": d3, "images": d4}, weights={"synthetic": 1.0, "web": 2.0})

Each row holds seq_len + 1 tokens: `input_ids` list<int32>, `loss_mask` list<uint8> (1 where the token is a
target), plus `pixel_values` (float32, flattened (3, tile, tile) tiles) and `n_tiles` for image rows.

- pretrain / pretrain_val: documents as `<|begin_of_text|> text <|end_of_text|>`, concatenated and cut into rows
  (the classic GPT packing); a seeded `val_fraction` of documents goes to the validation set; each training
  document enters `weight` times on average (its source's mixing weight). The last row of each batch is padded
  with `<|finetune_right_pad|>` (mask 0), so no token is dropped.
- sft: conversations rendered with the chat template; only assistant tokens (and their `<|eot|>`) train.
  Conversations are packed whole, first-fit in order; one longer than a row is truncated (counted).
- images: digit chats whose `{type: image}` items expand to `<|image_start|><|image|><|patch|>*n<|image_end|>`, with n
  = (tile/patch)^2 / 4; the image block never trains; tiles follow row order (the order `<|patch|>` runs
  consume them).
- Every sequence is built at the id level (herd.data.tokenizer): special tokens are inserted by id, and text
  that contains special-token strings encodes them as plain text.

Ray Data runs the tokenizer in ONE actor (`ActorPoolStrategy(size=1)`): on 2 CPUs two 1-CPU actors starve the
read tasks and deadlock (see the Ray notes); one fast-tokenizer actor already saturates both cores. The
packed batches stream back to the caller, which writes shards of exactly `rows_per_shard` rows with stable
names, so the same input gives byte-identical shards (and the same artifact digest).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from herd.data.config import PackingConfig
from herd.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, encode_chat_batch, encode_plain

TEXT_SCHEMA = pa.schema([("input_ids", pa.list_(pa.int32())), ("loss_mask", pa.list_(pa.uint8()))])
INDEX_FILE = "index.json"  # shard list + counts, read by herd.data.reader
SETS = ("pretrain", "pretrain_val", "sft", "images")
IMAGE_SCHEMA = pa.schema(
    [
        ("input_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.uint8())),
        ("pixel_values", pa.list_(pa.float32())),
        ("n_tiles", pa.int32()),
    ]
)


def _unit(key: str, seed: int) -> float:
    """A stable uniform number in [0, 1) for `key` (independent of process and batch boundaries)."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2**64


def is_validation(origin: str, fraction: float, seed: int) -> bool:
    return fraction > 0 and _unit("val:" + origin, seed) < fraction


def copies(origin: str, weight: float, seed: int) -> int:
    """How many times a document enters training: floor(weight), plus one with probability frac(weight)."""
    whole = int(weight)
    return whole + int(_unit("mix:" + origin, seed) < weight - whole)


def _fill_rows(
    samples: list[tuple[list[int], list[int], Any]], row: int
) -> tuple[list[tuple[list[int], list[int], list[Any]]], int]:
    """First-fit-in-order packing of whole samples into rows of `row` tokens; pads; returns (rows, truncated)."""
    rows: list[tuple[list[int], list[int], list[Any]]] = []
    ids: list[int] = []
    mask: list[int] = []
    extra: list[Any] = []
    truncated = 0
    for s_ids, s_mask, s_extra in samples:
        if len(s_ids) > row:
            truncated += 1
            if s_extra is not None:  # cutting through an image block would orphan its tile: drop the sample
                continue
            s_ids, s_mask = s_ids[:row], s_mask[:row]
        if len(ids) + len(s_ids) > row:
            rows.append((ids, mask, extra))
            ids, mask, extra = [], [], []
        ids = ids + s_ids
        mask = mask + s_mask
        if s_extra is not None:
            extra.append(s_extra)
    if ids:
        rows.append((ids, mask, extra))
    padded = [(i + [PAD_ID] * (row - len(i)), m + [0] * (row - len(m)), e) for i, m, e in rows]
    return padded, truncated


UNIFIED_IN = pa.schema(
    [
        ("kind", pa.string()),
        ("text", pa.string()),
        ("source", pa.string()),
        ("origin", pa.string()),
        ("messages", pa.string()),
        ("image", pa.list_(pa.uint8())),
    ]
)
UNIFIED_OUT = pa.schema([("set", pa.string()), *IMAGE_SCHEMA])


def _as_unified(kind: str) -> Any:
    """A batch function giving one corpus file's rows the common input schema (so the datasets can union)."""

    def fn(batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        cols = {}
        for f in UNIFIED_IN:
            if f.name == "kind":
                cols["kind"] = pa.array([kind] * n, pa.string())
            elif f.name in batch.column_names:
                cols[f.name] = batch.column(f.name).cast(f.type)
            else:
                cols[f.name] = pa.nulls(n, f.type)
        return pa.table(cols, schema=UNIFIED_IN)

    return fn


class Packer:
    """The Ray Data actor: tokenizes a batch of corpus rows and packs each kind into its shard set's rows.

    Holds the tokenizer (built from its JSON, so it works on any node). Output rows carry `set` (pretrain,
    pretrain_val, sft, images) and the image columns (empty for text rows).
    """

    def __init__(
        self, tokenizer_json: str, cfg: dict[str, Any], weights: dict[str, float], sets: list[str]
    ) -> None:
        from tokenizers import Tokenizer

        self.tok = Tokenizer.from_str(tokenizer_json)
        self.cfg = PackingConfig(**cfg)
        self.row = self.cfg.seq_len + 1
        self.weights, self.sets = weights, set(sets)

    def __call__(self, batch: pa.Table) -> pa.Table:
        kinds = batch.column("kind").to_pylist()
        parts: list[tuple[str, list[tuple[list[int], list[int], list[np.ndarray]]]]] = []
        docs = [i for i, k in enumerate(kinds) if k == "document"]
        if docs:
            sub = batch.take(docs)
            for name, split in (("pretrain", "train"), ("pretrain_val", "val")):
                if name in self.sets:
                    parts.append((name, self._documents(sub, split)))
        for kind, name in (("chat", "sft"), ("image", "images")):
            idx = [i for i, k in enumerate(kinds) if k == kind]
            if idx and name in self.sets:
                parts.append((name, self._chats(batch.take(idx), with_images=kind == "image")))
        rows = [(name, r) for name, rs in parts for r in rs]
        return pa.table(
            {
                "set": pa.array([name for name, _ in rows], pa.string()),
                "input_ids": pa.array([r[0] for _, r in rows], type=pa.list_(pa.int32())),
                "loss_mask": pa.array([r[1] for _, r in rows], type=pa.list_(pa.uint8())),
                "pixel_values": pa.array(
                    [np.concatenate(r[2]) if r[2] else np.zeros(0, np.float32) for _, r in rows],
                    type=pa.list_(pa.float32()),
                ),
                "n_tiles": pa.array([len(r[2]) for _, r in rows], type=pa.int32()),
            },
            schema=UNIFIED_OUT,
        )

    def _documents(
        self, batch: pa.Table, split: str
    ) -> list[tuple[np.ndarray, np.ndarray, list[np.ndarray]]]:
        """`<|begin_of_text|> doc <|end_of_text|>` for the split's documents, concatenated and cut into rows."""
        texts: list[str] = []
        for text, source, origin in zip(
            batch.column("text").to_pylist(),
            batch.column("source").to_pylist(),
            batch.column("origin").to_pylist(),
            strict=True,
        ):
            val = is_validation(origin, self.cfg.val_fraction, self.cfg.seed)
            if split == "val":
                n = int(val)
            else:
                n = 0 if val else copies(origin, self.weights.get(source, 1.0), self.cfg.seed)
            texts.extend([text] * n)
        if not texts:
            return []
        ids = encode_plain(self.tok, texts)  # "<|eot|>" typed inside a document stays text, never a control id
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids)) + 2  # + BOS + EOS
        ends = np.cumsum(lengths)
        starts = ends - lengths
        flat = np.empty(int(ends[-1]), dtype=np.int32)
        body = np.ones(len(flat), dtype=bool)
        body[starts] = False
        body[ends - 1] = False
        flat[body] = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int32, count=int(body.sum()))
        flat[starts] = BOS_ID
        flat[ends - 1] = EOS_ID
        mask = np.ones(len(flat), dtype=np.uint8)
        mask[starts] = 0  # a document start is not a prediction target
        pad = (-len(flat)) % self.row  # pad the batch's last row instead of dropping its tokens
        flat = np.concatenate([flat, np.full(pad, PAD_ID, np.int32)])
        mask = np.concatenate([mask, np.zeros(pad, np.uint8)])
        return [
            (i, m, []) for i, m in zip(flat.reshape(-1, self.row), mask.reshape(-1, self.row), strict=True)
        ]

    def _chats(
        self, batch: pa.Table, with_images: bool
    ) -> list[tuple[list[int], list[int], list[np.ndarray]]]:
        convs = [json.loads(m) for m in batch.column("messages").to_pylist()]
        n_tok = self.cfg.image_tokens_per_tile if with_images else 0
        encoded = encode_chat_batch(self.tok, convs, tokens_per_tile=n_tok)
        if with_images:
            from herd.data.synthetic.images import digit_tile

            tiles = [digit_tile(p, self.cfg.tile_size).reshape(-1) for p in batch.column("image").to_pylist()]
        else:
            tiles = [None] * len(encoded)
        rows, _ = _fill_rows([(i, m, t) for (i, m), t in zip(encoded, tiles, strict=True)], self.row)
        return rows


class ShardWriter:
    """Writes streamed packed tables into shard-00000.parquet, ... of exactly `rows_per_shard` rows."""

    def __init__(self, out_dir: str | Path, schema: pa.Schema, rows_per_shard: int) -> None:
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.schema, self.rows_per_shard = schema, rows_per_shard
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.shards: list[dict[str, Any]] = []
        self.tokens = 0
        self.target_tokens = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._write(self.rows_per_shard)

    def _write(self, n: int) -> None:
        table = pa.concat_tables(self.pending).combine_chunks()
        head, rest = table.slice(0, n), table.slice(n)
        name = f"shard-{len(self.shards):05d}.parquet"
        pq.write_table(head.cast(self.schema), self.out / name, compression="snappy")
        ids = head.column("input_ids").combine_chunks().values.to_numpy()
        mask = head.column("loss_mask").combine_chunks().values.to_numpy()
        tokens, targets = int((ids != PAD_ID).sum()), int(mask.sum())
        self.tokens += tokens
        self.target_tokens += targets
        self.shards.append({"file": name, "rows": head.num_rows, "tokens": tokens, "target_tokens": targets})
        self.pending = [rest] if rest.num_rows else []
        self.pending_rows = rest.num_rows

    def close(self, **meta: Any) -> dict[str, Any]:
        if self.pending_rows:
            self._write(self.pending_rows)
        index = {
            "shards": self.shards,
            "rows": sum(s["rows"] for s in self.shards),
            "tokens": self.tokens,
            "target_tokens": self.target_tokens,
            **meta,
        }
        (self.out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return index


def _ray_data() -> Any:
    import ray
    import ray.data

    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    return ray.data


DRIVER_READ_BYTES = 256 * 1024**2


def _read(rd: Any, path: Path, cols: list[str], batch_docs: int) -> Any:
    """A Ray Dataset over one corpus file.

    Files up to DRIVER_READ_BYTES are read by the driver and handed over in blocks (`from_arrow`): Ray Data's
    file listing and read tasks cost 5-15 s of scheduling on a loaded 2-core box (measured) for a file pyarrow
    reads in milliseconds. Larger corpora use parallel read tasks.
    """
    if path.stat().st_size > DRIVER_READ_BYTES:
        return rd.read_parquet(str(path)).select_columns(cols)
    table = pq.read_table(path, columns=cols)
    blocks = [pa.Table.from_batches([b]) for b in table.to_batches(max_chunksize=4 * batch_docs)]
    return rd.from_arrow(blocks)


def pack_corpus(
    corpus_dir: str | Path,
    tokenizer_dir: str | Path,
    cfg: PackingConfig,
    out_dirs: dict[str, str | Path],
    weights: dict[str, float] | None = None,
) -> dict[str, dict[str, Any]]:
    """Pack a cleaned corpus (the clean step's output) into the shard sets named in `out_dirs`.

    Keys of out_dirs: any of "pretrain", "pretrain_val", "sft", "images". Returns each set's index
    (shards, rows, tokens, target tokens, seq_len, tile size), also written as <dir>/index.json.
    One Ray Data pipeline serves all sets: the corpus files are read (see `_read`), unioned under one
    schema and streamed through a single tokenizer actor.
    """
    unknown = set(out_dirs) - set(SETS)
    if unknown:
        raise ValueError(f"unknown shard sets {sorted(unknown)}; use {', '.join(SETS)}")
    rd = _ray_data()
    ctx = rd.DataContext.get_current()  # datasets copy the context when created: set it first, restore after
    saved = ctx.execution_options.preserve_order, ctx.enable_progress_bars
    # Ordered execution: the same corpus gives byte-identical shards, hence a stable artifact digest.
    ctx.execution_options.preserve_order, ctx.enable_progress_bars = True, False
    log = logging.getLogger("ray.data")  # its per-run INFO plan/stats lines would drown the flow's progress
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        return _pack(rd, Path(corpus_dir), Path(tokenizer_dir), cfg, out_dirs, weights or {})
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved
        log.setLevel(level)


def _pack(
    rd: Any,
    corpus: Path,
    tokenizer_dir: Path,
    cfg: PackingConfig,
    out_dirs: dict[str, str | Path],
    weights: dict[str, float],
) -> dict[str, dict[str, Any]]:
    from ray.data import ActorPoolStrategy

    tok_json = (tokenizer_dir / "tokenizer.json").read_text()
    parts = []
    for file, kind, cols in (
        ("documents.parquet", "document", ["text", "source", "origin"]),
        ("chats.parquet", "chat", ["messages", "source", "origin"]),
        ("images.parquet", "image", ["messages", "image"]),
    ):
        path = corpus / file
        if path.exists() and pq.ParquetFile(path).metadata.num_rows:
            parts.append(
                _read(rd, path, cols, cfg.batch_docs).map_batches(_as_unified(kind), batch_format="pyarrow")
            )
    writers = {
        name: ShardWriter(path, IMAGE_SCHEMA if name == "images" else TEXT_SCHEMA, cfg.rows_per_shard)
        for name, path in out_dirs.items()
    }
    if parts:
        ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
        packed = ds.map_batches(
            Packer,
            fn_constructor_args=(tok_json, cfg.model_dump(), weights, sorted(out_dirs)),
            batch_size=cfg.batch_docs,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=1),  # one actor: two would starve the readers on 2 CPUs (deadlock)
            num_cpus=1,
        )
        for table in packed.iter_batches(batch_size=None, batch_format="pyarrow"):
            names = table.column("set")
            for name, writer in writers.items():
                sel = table.filter(pc.equal(names, name))
                if sel.num_rows:
                    writer.add(sel.select(writer.schema.names))
    meta = {"seq_len": cfg.seq_len}
    image_meta = {
        "tile_size": cfg.tile_size,
        "patch_size": cfg.patch_size,
        "image_tokens_per_tile": cfg.image_tokens_per_tile,
    }
    return {
        name: w.close(kind=name, **meta, **(image_meta if name == "images" else {}))
        for name, w in writers.items()
    }
