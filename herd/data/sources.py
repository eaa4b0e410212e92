"""Read corpus sources (any fsspec URL or directory of jsonl, parquet or text) into records, never failing on a row.

    for item in read_source(source_cfg, files, max_line_bytes=cfg.cleaning.max_line_bytes):
        item  # Record(text | messages, origin="s3://b/x.jsonl:17") or Reject(reason, origin, detail)

A record is either a document (`text`) or a chat (`messages`: a list of {role, content}). A row that cannot
become one (invalid JSON, undecodable bytes, a missing or empty field, a malformed conversation, a line
beyond `max_line_bytes`) comes back as a `Reject` with its origin (uri plus line or row number), so the
caller counts it and writes it aside; one bad row never stops the flow. `describe_files` lists a source's
files with size and sha256 digest: the raw-source lineage record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec

from herd.data.config import SourceConfig

EXTENSIONS = {
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "text",
    ".md": "text",
    ".text": "text",
}
ROLES = {"system", "user", "assistant", "tool", "ipython"}

# Reject reasons, in the order reports list them.
INVALID_JSON = "invalid_json"
UNDECODABLE = "undecodable"
MISSING_FIELD = "missing_field"
INVALID_MESSAGES = "invalid_messages"
EMPTY = "empty"
TOO_LONG = "too_long"
TOO_SHORT = "too_short"
LOW_QUALITY = "low_quality"
EXACT_DUP = "exact_dup"
NEAR_DUP = "near_dup"
REASONS = (
    INVALID_JSON,
    UNDECODABLE,
    MISSING_FIELD,
    INVALID_MESSAGES,
    EMPTY,
    TOO_LONG,
    TOO_SHORT,
    LOW_QUALITY,
    EXACT_DUP,
    NEAR_DUP,
)


class SourceError(ValueError):
    """A source that cannot be read at all (missing, empty directory, unknown format)."""


@dataclass
class Record:
    source: str
    origin: str
    text: str | None = None
    messages: list[dict[str, Any]] | None = None


@dataclass
class Reject:
    source: str
    origin: str
    reason: str
    detail: str = ""
    sample: str = ""

    def to_json(self) -> dict[str, str]:
        return {
            "source": self.source,
            "origin": self.origin,
            "reason": self.reason,
            "detail": self.detail,
            "sample": self.sample,
        }


@dataclass
class SourceFile:
    url: str
    format: str
    size: int
    sha256: str = ""
    label: str = ""  # names the file in origins when its url is a machine-local detail (the synthetic corpus)

    @property
    def origin(self) -> str:
        return self.label or self.url


def _format_for(path: str, declared: str) -> str | None:
    if declared != "auto":
        return declared
    lower = path.lower()
    for ext, fmt in EXTENSIONS.items():
        if lower.endswith(ext):
            return fmt
    return None


def describe_files(
    source: SourceConfig, storage_options: dict[str, Any] | None = None, digest: bool = True
) -> list[SourceFile]:
    """The files of a source (a file, or every known-format file under a directory), sorted, with digests."""
    fs, root = fsspec.core.url_to_fs(source.uri, **(storage_options or {}))
    if not fs.exists(root):
        raise SourceError(f"source {source.uri!r} does not exist; fix data.sources or create it")
    paths = [root] if fs.isfile(root) else sorted(fs.find(root))
    protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
    files: list[SourceFile] = []
    for path in paths:
        fmt = _format_for(path, source.format if fs.isfile(root) else "auto")
        if fmt is None:
            if fs.isfile(root):
                raise SourceError(
                    f"cannot tell the format of {source.uri!r} from its extension; "
                    "set format: jsonl|parquet|text on this source"
                )
            continue  # unknown files inside a directory (e.g. _SUCCESS, README) are skipped
        if source.format != "auto" and not fs.isfile(root) and fmt != source.format:
            continue
        url = path if protocol in ("file", "local") else f"{protocol}://{path}"
        sha = ""
        if digest:
            h = hashlib.sha256()
            with fs.open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            sha = h.hexdigest()
        files.append(SourceFile(url=url, format=fmt, size=int(fs.size(path) or 0), sha256=sha))
    if not files:
        raise SourceError(
            f"source {source.uri!r} holds no .jsonl/.json/.parquet/.txt/.md files; check the path or set format"
        )
    return files


def fingerprint(source: SourceConfig, storage_options: dict[str, Any] | None = None) -> list[list[Any]]:
    """Cheap change detector (no reads): [url, size, ETag or mtime] per file. Feeds the clean step's cache key."""
    fs, _ = fsspec.core.url_to_fs(source.uri, **(storage_options or {}))
    fs.invalidate_cache()  # s3fs caches listings per process: a changed bucket must be seen
    out = []
    for sf in describe_files(source, storage_options, digest=False):
        info = fs.info(sf.url)
        stamp = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        out.append([sf.url, sf.size, str(stamp)])
    return out


def _sample(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text[:200]


def _row_to_item(row: Any, source: SourceConfig, name: str, origin: str) -> Record | Reject:
    if not isinstance(row, dict):
        return Reject(
            name, origin, INVALID_JSON, f"expected a JSON object, got {type(row).__name__}", _sample(row)
        )
    messages = row.get(source.messages_field)
    if messages is not None:
        if isinstance(messages, str):  # parquet sources often store the conversation as a JSON string
            try:
                messages = json.loads(messages)
            except json.JSONDecodeError as e:
                return Reject(
                    name, origin, INVALID_MESSAGES, f"messages string is not JSON: {e}", _sample(messages)
                )
        problem = validate_messages(messages)
        if problem:
            return Reject(name, origin, INVALID_MESSAGES, problem, _sample(messages))
        return Record(name, origin, messages=messages)
    text = row.get(source.text_field)
    if text is None:
        return Reject(
            name,
            origin,
            MISSING_FIELD,
            f"no {source.text_field!r} or {source.messages_field!r} field (set text_field/messages_field)",
            _sample(row),
        )
    if not isinstance(text, str):
        return Reject(
            name,
            origin,
            MISSING_FIELD,
            f"{source.text_field!r} is {type(text).__name__}, not text",
            _sample(text),
        )
    if not text.strip():
        return Reject(name, origin, EMPTY, f"{source.text_field!r} is empty")
    return Record(name, origin, text=text)


def validate_messages(messages: Any) -> str:
    """'' when `messages` is a usable conversation, else what is wrong with it."""
    if not isinstance(messages, list) or not messages:
        return "messages must be a non-empty list of {role, content}"
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return f"message {i} needs 'role' and 'content'"
        if m["role"] not in ROLES:
            return f"message {i} has unknown role {m['role']!r} (expected one of {sorted(ROLES)})"
        content = m["content"]
        if isinstance(content, list):
            if not all(isinstance(c, dict) and c.get("type") in ("text", "image") for c in content):
                return f"message {i} content items must be {{type: text|image}}"
        elif not isinstance(content, str):
            return f"message {i} content must be a string or a list of items"
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        return "conversation has no non-empty assistant message to train on"
    return ""


def _read_jsonl(
    f: Any, url: str, source: SourceConfig, name: str, max_line_bytes: int
) -> Iterator[Record | Reject]:
    for lineno, raw in enumerate(_lines(f, max_line_bytes), start=1):
        origin = f"{url}:{lineno}"
        if isinstance(raw, int):  # an over-long line, skipped without being held in memory
            yield Reject(
                name, origin, TOO_LONG, f"line of {raw} bytes exceeds max_line_bytes={max_line_bytes}"
            )
            continue
        if not raw.strip():
            continue  # blank lines are layout, not rows
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            yield Reject(name, origin, UNDECODABLE, str(e), raw[:200].decode("utf-8", "replace"))
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield Reject(name, origin, INVALID_JSON, str(e), line[:200])
            continue
        yield _row_to_item(row, source, name, origin)


def _lines(f: Any, max_line_bytes: int, chunk: int = 1 << 20) -> Iterator[bytes | int]:
    """Lines of a binary file (read in chunks: fsspec files have no bounded readline); a line longer than
    max_line_bytes comes back as its length (an int) and is never held in memory whole."""
    buf = b""
    skipping = 0  # > 0 while draining an over-long line: bytes seen so far
    while True:
        data = f.read(chunk)
        if not data:
            if skipping:
                yield skipping + len(buf)
            elif buf:
                yield buf
            return
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if skipping or len(buf) > max_line_bytes:
                    skipping += len(buf)
                    buf = b""
                break
            line, buf = buf[: nl + 1], buf[nl + 1 :]
            if skipping:
                yield skipping + len(line)
                skipping = 0
            elif len(line) > max_line_bytes:
                yield len(line)
            else:
                yield line


def _read_parquet(f: Any, url: str, source: SourceConfig, name: str) -> Iterator[Record | Reject]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    present = set(pf.schema_arrow.names)
    cols = [c for c in (source.text_field, source.messages_field) if c in present]
    if not cols:
        for i in range(pf.metadata.num_rows):
            yield Reject(
                name,
                f"{url}#{i}",
                MISSING_FIELD,
                f"parquet has no {source.text_field!r} or {source.messages_field!r} column (columns: {sorted(present)})",
            )
        return
    row_id = 0
    for batch in pf.iter_batches(columns=cols, batch_size=4096):
        for row in batch.to_pylist():
            row = {k: v for k, v in row.items() if v is not None}
            yield _row_to_item(row, source, name, f"{url}#{row_id}")
            row_id += 1


def read_source(
    source: SourceConfig,
    files: list[SourceFile],
    max_line_bytes: int,
    storage_options: dict[str, Any] | None = None,
) -> Iterator[Record | Reject]:
    """Every row of `files` (from `describe_files`) as a Record or a Reject, in file order."""
    name = source.display_name
    for sf in files:
        with fsspec.open(sf.url, "rb", **(storage_options or {})) as f:
            if sf.format == "jsonl":
                yield from _read_jsonl(f, sf.origin, source, name, max_line_bytes)
            elif sf.format == "parquet":
                yield from _read_parquet(f, sf.origin, source, name)
            elif sf.format == "text":
                data = f.read(max_line_bytes + 1)
                if len(data) > max_line_bytes:
                    yield Reject(name, sf.origin, TOO_LONG, f"text file over max_line_bytes={max_line_bytes}")
                    continue
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield Reject(name, sf.origin, UNDECODABLE, str(e), data[:200].decode("utf-8", "replace"))
                    continue
                if not text.strip():
                    yield Reject(name, sf.origin, EMPTY, "empty text file")
                else:
                    yield Record(name, sf.origin, text=text)
            else:
                raise SourceError(f"unknown format {sf.format!r} for {sf.url}")


def resolve_sources(
    sources: list[SourceConfig], synthetic_dir: str | None, storage_options: dict[str, Any] | None = None
) -> list[tuple[SourceConfig, list[SourceFile]]]:
    """Each source with its files (and digests); 'synthetic' points at the generated corpus in synthetic_dir."""
    out: list[tuple[SourceConfig, list[SourceFile]]] = []
    for src in sources:
        if src.uri == "synthetic":
            if synthetic_dir is None:
                raise SourceError(
                    "the 'synthetic' source needs the generated corpus (the data.synthetic step)"
                )
            local = src.model_copy(
                update={"uri": str(synthetic_dir), "name": src.display_name, "format": "jsonl"}
            )
            files = []
            for f in describe_files(local):
                base = f.url.rsplit("/", 1)[-1]
                if base in ("documents.jsonl", "chats.jsonl"):
                    f.label = f"synthetic/{base}"  # stable origins: the val split and mixing hash them
                    files.append(f)
            out.append((local, files))
        else:
            out.append((src, describe_files(src, storage_options)))
    return out
