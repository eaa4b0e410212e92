"""Exact and near-duplicate detection: content hashes, and MinHash signatures with LSH banding.

    near = NearDuplicateIndex(num_perm=128, bands=16, threshold=0.8, shingle_words=5, seed=0)
    dup_of = near.add(key, text)   # None if new (and now indexed), else the key of the earlier near-duplicate

A document's shingles are its lower-cased word n-grams, hashed deterministically (crc32 per word, combined
per window) so results do not depend on Python's per-process hash seed. A signature holds, per
permutation, the minimum of a multiply-shift hash over the shingles; two documents share a band bucket
when `rows = num_perm / bands` consecutive values agree, and a candidate counts as a duplicate only if the
estimated Jaccard similarity (share of equal signature values) reaches the threshold. With 16 bands of 8
rows a pair at similarity 0.8 becomes a candidate with probability 1 - (1 - 0.8^8)^16 = 0.95, one at 0.5 with
0.06 (then rejected by the estimate).
"""

from __future__ import annotations

import hashlib
import zlib

import numpy as np

_MIX = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime: spreads the per-window combination


def content_hash(text: str) -> bytes:
    """Exact-duplicate key: blake2b of the (already normalized) text."""
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def shingle_hashes(text: str, shingle_words: int) -> np.ndarray:
    """uint64 hashes of the lower-cased word `shingle_words`-grams of `text` (one shingle if shorter)."""
    words = text.lower().split()
    if not words:
        return np.zeros(1, dtype=np.uint64)
    wh = np.fromiter((zlib.crc32(w.encode("utf-8")) for w in words), dtype=np.uint64, count=len(words))
    k = min(shingle_words, len(words))
    n = len(words) - k + 1
    h = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(k):
            h = (h * _MIX) ^ (wh[j : j + n] + np.uint64(j + 1))
    return np.unique(h)


class NearDuplicateIndex:
    """MinHash LSH over documents added one by one; the first of a near-duplicate group is kept."""

    def __init__(
        self, num_perm: int, bands: int, threshold: float, shingle_words: int, seed: int = 0
    ) -> None:
        if num_perm % bands:
            raise ValueError(f"bands={bands} must divide num_perm={num_perm}")
        rng = np.random.default_rng(seed)
        # Odd multipliers make x -> a*x + b (mod 2^64) a bijection; the high 32 bits are the hash value.
        self._a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.threshold, self.shingle_words = threshold, shingle_words
        self._buckets: list[dict[bytes, list[int]]] = [{} for _ in range(bands)]
        self._signatures: list[np.ndarray] = []
        self._keys: list[str] = []

    def signature(self, text: str) -> np.ndarray:
        sh = shingle_hashes(text, self.shingle_words)
        sig = np.empty(self.num_perm, dtype=np.uint32)
        # Chunk over shingles so a 200k-character document does not allocate num_perm x shingles at once.
        best = np.full(self.num_perm, np.iinfo(np.uint64).max, dtype=np.uint64)
        with np.errstate(over="ignore"):
            for start in range(0, len(sh), 4096):
                chunk = sh[start : start + 4096]
                vals = (self._a[:, None] * chunk[None, :] + self._b[:, None]) >> np.uint64(32)
                np.minimum(best, vals.min(axis=1), out=best)
        sig[:] = best.astype(np.uint32)
        return sig

    def add(self, key: str, text: str) -> str | None:
        """Index `text` under `key` unless it near-duplicates an indexed document; return that document's key."""
        sig = self.signature(text)
        band_keys = [sig[i * self.rows : (i + 1) * self.rows].tobytes() for i in range(self.bands)]
        seen: set[int] = set()
        for band, bkey in enumerate(band_keys):
            for cand in self._buckets[band].get(bkey, ()):
                if cand in seen:
                    continue
                seen.add(cand)
                if float(np.mean(self._signatures[cand] == sig)) >= self.threshold:
                    return self._keys[cand]
        idx = len(self._keys)
        self._keys.append(key)
        self._signatures.append(sig)
        for band, bkey in enumerate(band_keys):
            self._buckets[band].setdefault(bkey, []).append(idx)
        return None

    def __len__(self) -> int:
        return len(self._keys)
