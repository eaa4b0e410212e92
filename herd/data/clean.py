"""Clean sources into a corpus: Unicode normalization, length and quality filters, exact and near dedupe.

    stats = clean_sources([(source_cfg, files), ...], cfg.cleaning, out_dir)

writes to `out_dir`:
  documents.parquet  text, source, origin         (pretraining documents that passed)
  chats.parquet      messages (JSON), source, origin (SFT conversations that passed)
  rejects.jsonl      one line per rejected row: source, origin (uri:line or uri#row), reason, detail, sample
  stats.json         per source: rows read, documents, chats, characters, rejects per reason

Filters run in a fixed order (read errors, then empty/too short/too long, quality, exact dup, near dup), so
each rejected row is counted once, under the first reason that applies. Sources are processed in recipe
order and the first copy of a duplicate wins.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from herd.data.config import CleaningConfig, SourceConfig
from herd.data.dedupe import NearDuplicateIndex, content_hash
from herd.data.sources import (
    EMPTY,
    EXACT_DUP,
    LOW_QUALITY,
    NEAR_DUP,
    REASONS,
    TOO_LONG,
    TOO_SHORT,
    Record,
    Reject,
    SourceFile,
    read_source,
)

DOC_SCHEMA = pa.schema([("text", pa.string()), ("source", pa.string()), ("origin", pa.string())])
CHAT_SCHEMA = pa.schema([("messages", pa.string()), ("source", pa.string()), ("origin", pa.string())])


def normalize(text: str, form: str) -> str:
    """Normalization form (NFKC by default), Unix newlines, no NULs, no surrounding whitespace."""
    if form != "none":
        text = unicodedata.normalize(form, text)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "").strip()


def quality_problem(text: str, cfg: CleaningConfig) -> str:
    """'' if `text` passes the quality heuristics, else why not (Gopher-style letter share, repeated lines)."""
    words = text.split()
    if len(words) < cfg.min_words:
        return f"{len(words)} words < min_words={cfg.min_words}"
    alpha = sum(c.isalpha() or c.isspace() for c in text) / len(text)
    if alpha < cfg.min_alpha_fraction:
        return f"letter share {alpha:.2f} < min_alpha_fraction={cfg.min_alpha_fraction}"
    lines = [ln.strip() for ln in text.split("\n") if ln.strip()]
    if len(lines) > 2:
        repeated = 1 - len(set(lines)) / len(lines)
        if repeated > cfg.max_repeat_line_fraction:
            return f"repeated-line share {repeated:.2f} > max_repeat_line_fraction={cfg.max_repeat_line_fraction}"
    return ""


def _normalize_messages(messages: list[dict[str, Any]], form: str) -> list[dict[str, Any]]:
    out = []
    for m in messages:
        content = m["content"]
        if isinstance(content, str):
            content = normalize(content, form)
        else:
            content = [
                {**c, "text": normalize(c.get("text", ""), form)} if c.get("type") == "text" else c
                for c in content
            ]
        out.append({"role": m["role"], "content": content})
    return out


def _chat_chars(messages: list[dict[str, Any]]) -> int:
    total = 0
    for m in messages:
        c = m["content"]
        total += len(c) if isinstance(c, str) else sum(len(i.get("text", "")) for i in c)
    return total


class _Batcher:
    """Buffered parquet writer: rows go out every `size` rows so memory stays flat."""

    def __init__(self, path: Path, schema: pa.Schema, size: int = 8192) -> None:
        self.writer = pq.ParquetWriter(str(path), schema)
        self.schema, self.size = schema, size
        self.rows: dict[str, list[str]] = {name: [] for name in schema.names}
        self.count = 0

    def add(self, **row: str) -> None:
        for k, v in row.items():
            self.rows[k].append(v)
        self.count += 1
        if len(self.rows[self.schema.names[0]]) >= self.size:
            self.flush()

    def flush(self) -> None:
        if self.rows[self.schema.names[0]]:
            self.writer.write_table(pa.table(self.rows, schema=self.schema))
            self.rows = {name: [] for name in self.schema.names}

    def close(self) -> None:
        self.flush()
        self.writer.close()


def clean_sources(
    sources: list[tuple[SourceConfig, list[SourceFile]]],
    cfg: CleaningConfig,
    out_dir: str | Path,
    storage_options: dict[str, Any] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Read, normalize, filter and dedupe every source into `out_dir`; return the stats (also in stats.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    docs = _Batcher(out / "documents.parquet", DOC_SCHEMA)
    chats = _Batcher(out / "chats.parquet", CHAT_SCHEMA)
    near = NearDuplicateIndex(cfg.num_perm, cfg.bands, cfg.near_dup_threshold, cfg.shingle_words, seed=seed)
    seen: set[bytes] = set()
    per_source: dict[str, dict[str, Any]] = {}
    with (out / "rejects.jsonl").open("w", encoding="utf-8") as rejects:
        for source, files in sources:
            st = per_source.setdefault(
                source.display_name,
                {
                    "uri": source.uri,
                    "rows_read": 0,
                    "documents": 0,
                    "chats": 0,
                    "chars": 0,
                    "rejects": Counter(),
                },
            )
            for item in read_source(source, files, cfg.max_line_bytes, storage_options):
                st["rows_read"] += 1
                if isinstance(item, Record):
                    item = _clean_record(item, cfg, seen, near)
                if isinstance(item, Reject):
                    st["rejects"][item.reason] += 1
                    rejects.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
                elif item.text is not None:
                    docs.add(text=item.text, source=item.source, origin=item.origin)
                    st["documents"] += 1
                    st["chars"] += len(item.text)
                else:
                    assert item.messages is not None
                    chats.add(
                        messages=json.dumps(item.messages, ensure_ascii=False),
                        source=item.source,
                        origin=item.origin,
                    )
                    st["chats"] += 1
                    st["chars"] += _chat_chars(item.messages)
    docs.close()
    chats.close()
    totals: Counter[str] = Counter()
    for st in per_source.values():
        st["rejects"] = {r: st["rejects"][r] for r in REASONS if st["rejects"][r]}
        totals.update(st["rejects"])
    stats = {
        "sources": per_source,
        "documents": docs.count,
        "chats": chats.count,
        "rows_read": sum(s["rows_read"] for s in per_source.values()),
        "chars": sum(s["chars"] for s in per_source.values()),
        "rejects": {r: totals[r] for r in REASONS if totals[r]},
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def _clean_record(
    rec: Record, cfg: CleaningConfig, seen: set[bytes], near: NearDuplicateIndex
) -> Record | Reject:
    if rec.messages is not None:
        messages = _normalize_messages(rec.messages, cfg.normalization)
        n = _chat_chars(messages)
        if n > cfg.max_chars:
            return Reject(rec.source, rec.origin, TOO_LONG, f"{n} chars > max_chars={cfg.max_chars}")
        if cfg.exact_dedupe:
            h = content_hash("\x1echat\x1e" + json.dumps(messages, sort_keys=True))
            if h in seen:
                return Reject(rec.source, rec.origin, EXACT_DUP, "same conversation seen before")
            seen.add(h)
        return Record(rec.source, rec.origin, messages=messages)

    assert rec.text is not None
    text = normalize(rec.text, cfg.normalization)
    if not text:
        return Reject(rec.source, rec.origin, EMPTY, "empty after normalization")
    if len(text) > cfg.max_chars:
        return Reject(
            rec.source, rec.origin, TOO_LONG, f"{len(text)} chars > max_chars={cfg.max_chars}", text[:200]
        )
    if len(text) < cfg.min_chars:
        return Reject(
            rec.source, rec.origin, TOO_SHORT, f"{len(text)} chars < min_chars={cfg.min_chars}", text
        )
    problem = quality_problem(text, cfg)
    if problem:
        return Reject(rec.source, rec.origin, LOW_QUALITY, problem, text[:200])
    if cfg.exact_dedupe:
        h = content_hash(text)
        if h in seen:
            return Reject(rec.source, rec.origin, EXACT_DUP, "same text seen before", text[:200])
        seen.add(h)
    if cfg.near_dedupe:
        dup_of = near.add(rec.origin, text)
        if dup_of is not None:
            return Reject(rec.source, rec.origin, NEAR_DUP, f"near-duplicate of {dup_of}", text[:200])
    return Record(rec.source, rec.origin, text=text)


IMAGE_SCHEMA = pa.schema([("messages", pa.string()), ("image", pa.list_(pa.uint8())), ("label", pa.int64())])


def collect_images(jsonl_path: str | Path, out_dir: str | Path) -> int:
    """Copy the synthetic digit chats (already clean by construction) to out_dir/images.parquet; return rows."""
    rows: dict[str, list[Any]] = {"messages": [], "image": [], "label": []}
    with Path(jsonl_path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                rows["messages"].append(json.dumps(r["messages"], ensure_ascii=False))
                rows["image"].append(r["image"])
                rows["label"].append(r["label"])
    pq.write_table(pa.table(rows, schema=IMAGE_SCHEMA), str(Path(out_dir) / "images.parquet"))
    return len(rows["label"])
