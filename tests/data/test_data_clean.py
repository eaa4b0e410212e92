"""Cleaning: a source of broken rows completes with exact per-reason counts, rejects keep their origin."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
from data_corpora import good_docs, write_broken_jsonl, write_parquet_source

from herd.data.clean import clean_sources
from herd.data.config import CleaningConfig, SourceConfig
from herd.data.dedupe import NearDuplicateIndex, shingle_hashes
from herd.data.sources import describe_files, resolve_sources


def test_broken_rows_exact_counts_and_rejects_file(tmp_path):
    src_dir = tmp_path / "src"
    src_dir.mkdir()
    want = write_broken_jsonl(src_dir / "broken.jsonl")
    first_doc = good_docs(10, seed=1)[0]
    want_pq = write_parquet_source(tmp_path / "more.parquet", dup_of=first_doc)
    (src_dir / "README").write_text("not a corpus file: skipped")
    sources = [
        SourceConfig(uri=str(src_dir), name="broken"),
        SourceConfig(uri=str(tmp_path / "more.parquet")),
    ]
    stats = clean_sources(resolve_sources(sources, None), CleaningConfig(), tmp_path / "out")

    broken = stats["sources"]["broken"]
    assert broken["rows_read"] == want["rows_read"]
    assert broken["documents"] == want["documents"] and broken["chats"] == want["chats"]
    expect_rejects = {k: v for k, v in want.items() if k not in ("rows_read", "documents", "chats")}
    assert broken["rejects"] == expect_rejects
    more = stats["sources"]["more.parquet"]
    assert (more["rows_read"], more["documents"]) == (want_pq["rows_read"], want_pq["documents"])
    assert more["rejects"] == {"missing_field": 1, "exact_dup": 1}  # the duplicate crosses sources

    assert stats["documents"] == 13 and stats["chats"] == 1
    assert pq.read_table(tmp_path / "out" / "documents.parquet").num_rows == 13
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == sum(expect_rejects.values()) + 2
    by_origin = {r["origin"]: r for r in rejects}
    src = str(src_dir / "broken.jsonl")
    assert by_origin[f"{src}:11"]["reason"] == "invalid_json"
    assert by_origin[f"{src}:13"]["reason"] == "undecodable"
    assert (
        by_origin[f"{src}:17"]["reason"] == "too_long" and "5000000 chars" in by_origin[f"{src}:17"]["detail"]
    )
    assert by_origin[f"{src}:24"]["detail"] == f"near-duplicate of {src}:3"
    assert by_origin[f"{tmp_path / 'more.parquet'}#3"]["reason"] == "missing_field"
    assert json.loads((tmp_path / "out" / "stats.json").read_text())["rejects"]["exact_dup"] == 4


def test_over_long_raw_line_is_skipped_unparsed(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(
        b'{"text": "' + b"y" * 3000 + b'"}\n' + json.dumps({"text": good_docs(1, 3)[0]}).encode() + b"\n"
    )
    stats = clean_sources(
        resolve_sources([SourceConfig(uri=str(p))], None), CleaningConfig(max_line_bytes=2048), tmp_path / "o"
    )
    assert stats["rejects"] == {"too_long": 1} and stats["documents"] == 1


def test_text_source_and_digests(tmp_path):
    d = tmp_path / "txt"
    d.mkdir()
    (d / "a.txt").write_text(good_docs(1, 4)[0])
    (d / "b.md").write_bytes(b"\xff\xfe broken")
    files = describe_files(SourceConfig(uri=str(d)))
    assert [f.format for f in files] == ["text", "text"] and all(len(f.sha256) == 64 for f in files)
    stats = clean_sources([(SourceConfig(uri=str(d)), files)], CleaningConfig(), tmp_path / "o")
    assert stats["documents"] == 1 and stats["rejects"] == {"undecodable": 1}


def test_minhash_separates_near_from_far():
    docs = good_docs(30, seed=5)
    index = NearDuplicateIndex(num_perm=128, bands=16, threshold=0.8, shingle_words=5, seed=0)
    assert all(index.add(str(i), d) is None for i, d in enumerate(docs))  # independent docs are kept
    words = docs[7].split()
    assert index.add("edit", " ".join(words[:30] + ["quokka"] + words[31:])) == "7"
    # deterministic across processes: crc32-based shingles, not Python's salted hash()
    assert shingle_hashes("a b c d e f", 5).tolist() == shingle_hashes("A b c d e  f", 5).tolist()
