"""Artifact store: content-addressed directories with a manifest, on any fsspec filesystem.

A plain path, ``file://...`` and ``s3://bucket/prefix`` behave the same (s3 endpoint and credentials come from
the environment, ``AWS_*`` / ``AWS_ENDPOINT_URL``, or from ``runtime.storage_options``). Layout under the root::

    objects/<d[:2]>/<digest>/...files   MANIFEST.json written LAST: the commit mark
    steps/<step name>/<cache key>.json  finished-step records (see herd.platform.cache)
    checkpoints/<step>/<key>/...        stable per (step, cache key) so a restarted step resumes

An artifact's id is the sha256 of its content (relative paths + file bytes). A directory without a manifest is
never read as an artifact, so a crash mid-write leaves nothing half-visible; writing identical content again
is a no-op. Keys given by users are validated: no ``..``, no absolute paths, nothing outside the root.

    store = ArtifactStore("s3://bucket/herd")
    art = store.put_dir(local_dir, kind="dataset", format="parquet", producer_run="<mlflow run id>")
    store.get(art.digest).local_path()     # downloaded into $HERD_HOME/cache when the store is remote
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.core import url_to_fs

from herd.platform.errors import StoreError

MANIFEST = "MANIFEST.json"
_CHUNK = 1 << 20


def dir_digest(root: Path) -> str:
    """sha256 over the sorted (relative path, file sha256) pairs of a local directory."""
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name != MANIFEST)
    for p in files:
        fh = hashlib.sha256()
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                fh.update(chunk)
        h.update(p.relative_to(root).as_posix().encode() + b"\0" + fh.hexdigest().encode() + b"\n")
    return h.hexdigest()


def safe_key(key: str) -> str:
    """Validate a user-given relative key: no '..', no absolute paths, no empty parts."""
    if not isinstance(key, str) or not key.strip():
        raise StoreError(f"store key {key!r} is empty; give a relative path like 'checkpoints/run-1'")
    if key.startswith(("/", "\\")) or "://" in key or (len(key) > 1 and key[1] == ":"):
        raise StoreError(f"store key {key!r} is absolute; keys are relative to the store root")
    parts = PurePosixPath(key.replace("\\", "/")).parts
    if any(p in ("..", ".") for p in parts) or "\\" in key:
        raise StoreError(f"store key {key!r} escapes the store root ('..', '.' or backslashes are not allowed)")
    return "/".join(parts)


@dataclass
class Manifest:
    """What an artifact is. Written last; its presence is the commit mark."""

    digest: str
    kind: str  # dataset | model | tokenizer | checkpoint | report | ...
    format: str  # parquet | hf-safetensors | json | ...
    producer_run: str | None = None  # MLflow run id of the step that made it
    producer_step: str | None = None
    parents: list[str] = field(default_factory=list)  # digests of the artifacts it was made from
    config_hash: str | None = None
    created_at: float = field(default_factory=time.time)
    files: int = 0
    bytes: int = 0
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        data = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


class Artifact:
    """A committed artifact: its manifest, its URI in the store, and a way to get it as a local directory."""

    def __init__(self, store: ArtifactStore, manifest: Manifest):
        self.store = store
        self.manifest = manifest

    @property
    def digest(self) -> str:
        return self.manifest.digest

    @property
    def kind(self) -> str:
        return self.manifest.kind

    @property
    def uri(self) -> str:
        return self.store.uri(self.store.object_key(self.digest))

    def local_path(self) -> Path:
        """A local directory with the artifact's files (the store itself when local, else a cached download)."""
        return self.store.materialize(self.digest)

    def __repr__(self) -> str:
        return f"Artifact({self.kind}:{self.digest[:12]} at {self.uri})"


class ArtifactStore:
    """fsspec-backed store rooted at a path or URL. Safe to pickle into Ray tasks."""

    def __init__(self, root: str | os.PathLike, storage_options: dict[str, Any] | None = None,
                 cache_dir: str | os.PathLike | None = None):
        root = str(root)
        self.storage_options = dict(storage_options or {})
        self.fs, path = url_to_fs(root, **self.storage_options)
        self.protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        self.local = self.protocol in ("file", "local")
        if self.local:
            path = os.path.abspath(os.path.expanduser(path))
        self.root_path = path.rstrip("/")
        self.root = root if not self.local else self.root_path
        self.cache_dir = Path(cache_dir) if cache_dir else None

    def __reduce__(self):  # fsspec instances pickle, but re-creating from the URL is sturdier across hosts
        return (ArtifactStore, (self.root, self.storage_options, self.cache_dir))

    # ----------------------------------------------------------------------------------------- paths
    def path(self, key: str) -> str:
        return f"{self.root_path}/{safe_key(key)}"

    def uri(self, key: str) -> str:
        p = self.path(key)
        return p if self.local else f"{self.protocol}://{p}"

    @staticmethod
    def object_key(digest: str) -> str:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise StoreError(f"{digest!r} is not an artifact digest (64 lowercase hex characters)")
        return f"objects/{digest[:2]}/{digest}"

    # ------------------------------------------------------------------------------------ small files
    def write_text(self, key: str, text: str) -> None:
        """Write one small file; on a local store through a temp file + rename (never half-written)."""
        path = self.path(key)
        if self.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
        else:
            self.fs.pipe_file(path, text.encode())  # a single S3 PUT is atomic

    def read_text(self, key: str) -> str | None:
        try:
            return self.fs.cat_file(self.path(key)).decode()
        except FileNotFoundError:
            return None

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def list(self, prefix: str) -> list[str]:
        """Relative keys of the files directly under ``prefix`` (empty when it does not exist)."""
        try:
            entries = self.fs.ls(self.path(prefix), detail=False)
        except FileNotFoundError:
            return []
        base = self.root_path + "/"
        return sorted(e.removeprefix(base) for e in entries)

    def delete(self, key: str) -> None:
        path = self.path(key)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)

    # -------------------------------------------------------------------------------------- artifacts
    def has(self, digest: str) -> bool:
        return self.fs.exists(f"{self.path(self.object_key(digest))}/{MANIFEST}")

    def get(self, digest: str) -> Artifact:
        """The committed artifact with this digest (a unique prefix of at least 8 characters also works)."""
        if len(digest) < 64:
            digest = self.resolve_prefix(digest)
        text = self.read_text(f"{self.object_key(digest)}/{MANIFEST}")
        if text is None:
            raise StoreError(f"artifact {digest[:12]} is not in store {self.root} (or was never committed)")
        return Artifact(self, Manifest.from_json(text))

    def resolve_prefix(self, prefix: str) -> str:
        if len(prefix) < 8:
            raise StoreError(f"artifact id {prefix!r} is too short; give at least 8 hex characters")
        hits = [k.rsplit("/", 1)[-1] for k in self.list(f"objects/{prefix[:2]}")]
        hits = [h for h in hits if h.startswith(prefix) and self.has(h)]
        if len(hits) != 1:
            raise StoreError(f"artifact id {prefix!r} matches {len(hits)} committed artifacts; give more characters")
        return hits[0]

    def artifacts(self) -> list[Artifact]:
        """Every committed artifact (directories without a manifest are skipped)."""
        out = []
        for shard in self.list("objects"):
            for obj in self.list(shard):
                text = self.read_text(f"{obj}/{MANIFEST}")
                if text is not None:
                    out.append(Artifact(self, Manifest.from_json(text)))
        return out

    def put_dir(self, local: str | os.PathLike, *, kind: str, format: str, producer_run: str | None = None,
                producer_step: str | None = None, parents: list[str] | None = None,
                config_hash: str | None = None, meta: dict[str, Any] | None = None) -> Artifact:
        """Commit a local directory as an artifact: files first, MANIFEST.json last. Idempotent by content."""
        local = Path(local)
        if not local.is_dir():
            raise StoreError(f"cannot store {local}: not a directory")
        digest = dir_digest(local)
        if self.has(digest):
            return self.get(digest)  # identical content is already committed: no-op
        files = [p for p in local.rglob("*") if p.is_file() and p.name != MANIFEST]
        manifest = Manifest(digest=digest, kind=kind, format=format, producer_run=producer_run,
                            producer_step=producer_step, parents=sorted(set(parents or [])),
                            config_hash=config_hash, files=len(files),
                            bytes=sum(p.stat().st_size for p in files), meta=dict(meta or {}))
        final = self.path(self.object_key(digest))
        if self.local:
            # Stage next to the target and rename: the directory appears whole or not at all.
            staging = Path(self.root_path) / ".staging" / f"{digest[:12]}-{uuid.uuid4().hex[:8]}"
            staging.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(local, staging, ignore=shutil.ignore_patterns(MANIFEST))
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.rename(staging, final)
            except OSError:  # the target exists: never delete it in place, a reader may be using it
                if self.has(digest):  # another process committed the same content meanwhile: it is live
                    shutil.rmtree(staging, ignore_errors=True)
                    return self.get(digest)
                if dir_digest(Path(final)) == digest:  # all files there, manifest not yet (or never) written
                    shutil.rmtree(staging, ignore_errors=True)
                else:  # a partial leftover of a crash: swap it out atomically, then drop it
                    trash = Path(self.root_path) / ".staging" / f"trash-{digest[:12]}-{uuid.uuid4().hex[:8]}"
                    os.rename(final, trash)
                    os.rename(staging, final)
                    shutil.rmtree(trash, ignore_errors=True)
        else:
            for p in files:
                self.fs.put_file(str(p), f"{final}/{p.relative_to(local).as_posix()}")
        self.write_text(f"{self.object_key(digest)}/{MANIFEST}", manifest.to_json())
        return Artifact(self, manifest)

    def materialize(self, digest: str) -> Path:
        """Local directory of an artifact; remote ones are downloaded once into the cache dir."""
        key = self.object_key(digest)
        if not self.has(digest):
            raise StoreError(f"artifact {digest[:12]} is not committed in {self.root}")
        if self.local:
            return Path(self.path(key))
        cache = self.cache_dir or Path(os.environ.get("HERD_HOME", ".herd")).resolve() / "cache"
        target = cache / digest
        if (target / MANIFEST).exists():
            return target
        tmp = cache / f".dl-{digest[:12]}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True, exist_ok=True)
        remote = self.path(key)
        try:
            for path in self.fs.find(remote):
                # A remote key is data, not a path to trust: "objects/ab/<d>/../../x" must not write outside tmp.
                rel = safe_key(path[len(remote) + 1:])
                dest = tmp / rel
                if not dest.resolve().is_relative_to(tmp.resolve()):
                    raise StoreError(f"artifact {digest[:12]} in {self.root} holds a file outside its directory "
                                     f"({rel!r}); refusing to download it")
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(path, str(dest))
            # Verified before the files become visible under the cache path that callers read.
            if dir_digest(tmp) != digest:
                raise StoreError(f"artifact {digest[:12]} downloaded from {self.root} does not match its digest "
                                 "(changed or corrupt in the store); refusing to use it")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same download first
            shutil.rmtree(tmp, ignore_errors=True)
        return target

    def incomplete(self) -> list[str]:
        """Object directories without a manifest (left by a crash); never visible as artifacts."""
        out = []
        for shard in self.list("objects"):
            for obj in self.list(shard):
                if not self.fs.exists(f"{self.root_path}/{obj}/{MANIFEST}"):
                    out.append(obj)
        return out


def open_text(uri: str, storage_options: dict[str, Any] | None = None) -> str:
    """Read a small text file from any fsspec URL (used for checkpoints and step records)."""
    with fsspec.open(uri, "r", **(storage_options or {})) as f:
        return f.read()
