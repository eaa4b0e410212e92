"""ArtifactStore behaves the same on a local directory and on s3:// (moto's server on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from herd.platform.errors import StoreError
from herd.platform.store import MANIFEST, ArtifactStore, dir_digest, safe_key


@pytest.fixture(params=["local", "file", "s3"])
def store(request, tmp_path: Path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(tmp_path / "store", cache_dir=tmp_path / "cache")
    if request.param == "file":
        return ArtifactStore(f"file://{tmp_path}/store", cache_dir=tmp_path / "cache")
    return ArtifactStore(request.getfixturevalue("s3_uri"), cache_dir=tmp_path / "cache")


def make_dir(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


def test_put_get_roundtrip_and_manifest(store, tmp_path):
    src = make_dir(tmp_path / "src", {"a.txt": "alpha", "sub/b.bin": "beta"})
    parent = "0" * 64
    art = store.put_dir(src, kind="dataset", format="text", producer_run="run1", producer_step="x.y",
                        parents=[parent], config_hash="k1", meta={"rows": 2})
    assert art.digest == dir_digest(src)
    got = store.get(art.digest)
    m = got.manifest
    assert (m.kind, m.format, m.producer_run, m.parents, m.config_hash, m.files, m.meta) == (
        "dataset", "text", "run1", [parent], "k1", 2, {"rows": 2})
    assert m.bytes == len("alpha") + len("beta") and m.created_at > 0
    local = got.local_path()
    assert (local / "a.txt").read_text() == "alpha" and (local / "sub" / "b.bin").read_text() == "beta"
    assert dir_digest(local) == art.digest
    assert store.get(art.digest[:10]).digest == art.digest  # unique prefix
    assert [a.digest for a in store.artifacts()] == [art.digest]


def test_identical_content_is_a_noop(store, tmp_path):
    a = store.put_dir(make_dir(tmp_path / "a", {"x": "same"}), kind="dataset", format="t", producer_run="r1")
    b = store.put_dir(make_dir(tmp_path / "b", {"x": "same"}), kind="dataset", format="t", producer_run="r2")
    assert a.digest == b.digest and b.manifest.producer_run == "r1"  # first commit kept
    assert len(store.artifacts()) == 1
    c = store.put_dir(make_dir(tmp_path / "c", {"x": "different"}), kind="dataset", format="t")
    assert c.digest != a.digest and len(store.artifacts()) == 2


def test_directory_without_manifest_is_not_an_artifact(store, tmp_path):
    art = store.put_dir(make_dir(tmp_path / "a", {"x": "1"}), kind="model", format="t")
    # simulate a crash mid-write of another artifact: files present, manifest never written
    half = "ab" + "c" * 62
    store.write_text(f"objects/ab/{half}/part-0.bin", "partial")
    assert not store.has(half)
    with pytest.raises(StoreError, match="not in store"):
        store.get(half)
    assert [a.digest for a in store.artifacts()] == [art.digest]
    assert store.incomplete() == [f"objects/ab/{half}"]
    # committing that content later works and makes it visible
    redo = store.put_dir(make_dir(tmp_path / "b", {"x": "1", "y": "2"}), kind="model", format="t")
    assert store.has(redo.digest)


def test_small_files_and_listing(store):
    store.write_text("steps/s.a/k.json", json.dumps({"k": 1}))
    assert json.loads(store.read_text("steps/s.a/k.json")) == {"k": 1}
    assert store.read_text("steps/s.a/missing.json") is None
    assert store.list("steps/s.a") == ["steps/s.a/k.json"]
    assert store.exists("steps/s.a/k.json")
    store.delete("steps/s.a")
    assert not store.exists("steps/s.a/k.json")


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "/etc/passwd", "", "a\\..\\b", "s3://other/x"])
def test_user_keys_cannot_escape_the_root(bad, tmp_path):
    with pytest.raises(StoreError):
        safe_key(bad)
    store = ArtifactStore(tmp_path / "s")
    with pytest.raises(StoreError):
        store.write_text(bad, "x")
    assert not any((tmp_path.parent).glob("escape*"))


def test_bad_ids_are_refused(tmp_path):
    store = ArtifactStore(tmp_path / "s")
    with pytest.raises(StoreError, match="not an artifact digest"):
        store.get("Z" * 64)
    with pytest.raises(StoreError, match="too short"):
        store.get("abc")
    with pytest.raises(StoreError, match="not a directory"):
        store.put_dir(tmp_path / "nope", kind="dataset", format="t")


def test_remote_download_is_cached_and_verified(s3_uri, tmp_path):
    store = ArtifactStore(s3_uri, cache_dir=tmp_path / "cache")
    art = store.put_dir(make_dir(tmp_path / "a", {"w.bin": "weights"}), kind="model", format="t")
    first = art.local_path()
    assert first.parent == tmp_path / "cache" and (first / MANIFEST).exists()  # the cache's commit mark
    assert art.local_path() == first
    assert art.uri.startswith("s3://")
