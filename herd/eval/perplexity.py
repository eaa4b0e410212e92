"""Perplexity suite: token-weighted held-out loss and perplexity on a packed dataset artifact.

    r = evaluate_perplexity(lm, val_dir, rows=64)       # data.pack.pretrain_val, or any packed shard set
    r.metrics["loss"], r.metrics["perplexity"]          # bootstrap CIs over sequences

Rows are the packer's ``seq_len + 1``-token sequences (``input_ids``, ``loss_mask``); the loss is the summed
next-token NLL over target tokens divided by their count (token-weighted, not a mean of per-row means). The
interval resamples whole sequences (tokens within a sequence are not independent); perplexity's interval is
exp of the loss interval.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from herd.eval.lm import HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import Score, bootstrap_mean


def read_packed(dataset_dir: str | Path, rows: int) -> tuple[list[list[int]], list[list[int]]]:
    """The first ``rows`` text rows (input_ids, loss_mask) of a packed shard set, in shard order."""
    import pyarrow.parquet as pq

    shards = sorted(Path(dataset_dir).glob("shard-*.parquet"))
    if not shards:
        raise FileNotFoundError(f"no shard-*.parquet in {dataset_dir}: pass a packed dataset artifact "
                                "(data.pack.pretrain_val)")
    ids: list[list[int]] = []
    masks: list[list[int]] = []
    for shard in shards:
        cols = [c for c in ("input_ids", "loss_mask") if c in pq.read_schema(shard).names]
        table = pq.read_table(shard, columns=cols)
        ids += table.column("input_ids").to_pylist()
        masks += (table.column("loss_mask").to_pylist() if "loss_mask" in cols
                  else [[1] * len(r) for r in table.column("input_ids").to_pylist()])
        if len(ids) >= rows:
            break
    return ids[:rows], masks[:rows]


def evaluate_perplexity(lm: HerdLM, dataset_dir: str | Path, *, rows: int = 64, confidence: float = 0.95,
                        resamples: int = 1000, seed: int = 0) -> SuiteResult:
    t0 = time.perf_counter()
    ids, masks = read_packed(dataset_dir, rows)
    per_row = lm.token_nll(ids, masks)
    keep = [(s, n) for s, n in per_row if n > 0]
    if not keep:
        raise ValueError(f"{dataset_dir}: the first {rows} rows have no target tokens")
    sums, counts = np.array([s for s, _ in keep]), np.array([n for _, n in keep], dtype=np.float64)
    loss = bootstrap_mean(sums / counts, weights=counts, confidence=confidence, resamples=resamples, seed=seed)
    ppl = Score(math.exp(loss.value), math.exp(loss.lo), math.exp(loss.hi), loss.n, "bootstrap")
    samples = [{"id": f"row-{i:05d}", "nll": s, "tokens": n, "loss": s / n} for i, (s, n) in enumerate(keep)]
    return SuiteResult("perplexity", {"loss": loss, "perplexity": ppl}, primary="perplexity", samples=samples,
                       outcome_key="loss", seconds=time.perf_counter() - t0,
                       extra={"tokens": int(counts.sum()), "rows": len(keep)})


__all__ = ["evaluate_perplexity", "read_packed"]
