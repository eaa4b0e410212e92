"""Tokenize-and-pack throughput: herd's whole Ray Data pack step vs the tokenizer's own batch encode.

    .venv/bin/python benchmarks/data_throughput.py                 # ~50 MB of text, results to stdout
    .venv/bin/python benchmarks/data_throughput.py --mb 5 --json out.json

Same text, same tokenizer, same process, one run:
  reference  `tokenizers.Tokenizer.encode_batch_fast` over the documents in batches of `batch_docs` (the
             fastest thing the tokenizer itself offers: Rust, multi-threaded, no offsets)
  herd       `herd.data.pack.pack_corpus`: Ray Data read of the cleaned corpus parquet, one tokenizer actor
             that also adds BOS/EOS, packs into seq_len+1 rows with loss masks, streaming back to the driver,
             which writes snappy parquet shards plus the index. Ray is started (and warmed by a tiny pack)
             before timing: a flow starts Ray once for all its steps.
Both run `--repeat` times, alternating; each keeps its best time (the least disturbed by other load).
Overhead = reference tokens/s / herd tokens/s - 1 (the bar: at most 25%).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def make_corpus(out: Path, megabytes: float) -> list[str]:
    """The tiny synthetic corpus's documents, repeated (with a distinct origin) up to `megabytes` of text."""
    from herd.data.config import SyntheticConfig
    from herd.data.synthetic import build_synthetic

    base = [d["text"] for d in build_synthetic(SyntheticConfig(n_images=0)).documents]
    texts: list[str] = []
    size = 0
    while size < megabytes * 1e6:
        for t in base:
            texts.append(t)
            size += len(t)
    origins = [f"bench:{i}" for i in range(len(texts))]
    table = pa.table({"text": texts, "source": ["bench"] * len(texts), "origin": origins})
    pq.write_table(table, out / "documents.parquet")
    return texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="megabytes of text")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--repeat", type=int, default=3, help="alternating repetitions (best time of each is kept)"
    )
    args = ap.parse_args()

    import ray

    from herd.data.config import PackingConfig, TokenizerConfig
    from herd.data.pack import pack_corpus
    from herd.data.tokenizer import save_tokenizer, train_tokenizer

    work = Path(tempfile.mkdtemp(prefix="herd-bench-data-"))
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        texts = make_corpus(corpus, args.mb)
        tok_cfg = TokenizerConfig()
        tok = train_tokenizer(texts[:20000], tok_cfg)
        save_tokenizer(tok, work / "tok", tok_cfg)
        cfg = PackingConfig(val_fraction=0.0)  # every document to the one timed shard set

        ray.init(include_dashboard=False, log_to_driver=False)
        warm = work / "warm"
        warm.mkdir()
        pq.write_table(pq.read_table(corpus / "documents.parquet").slice(0, 64), warm / "documents.parquet")
        pack_corpus(warm, work / "tok", cfg, {"pretrain": work / "warm_out"})

        def reference() -> tuple[float, int]:
            """The tokenizer's own batch encode: same text, same batch size as the pipeline."""
            t0 = time.perf_counter()
            n = 0
            for i in range(0, len(texts), cfg.batch_docs):
                batch = tok.encode_batch_fast(texts[i : i + cfg.batch_docs], add_special_tokens=False)
                n += sum(len(e.ids) for e in batch)
            return time.perf_counter() - t0, n

        def herd(k: int) -> tuple[float, dict]:
            t0 = time.perf_counter()
            index = pack_corpus(corpus, work / "tok", cfg, {"pretrain": work / f"packed{k}"})["pretrain"]
            return time.perf_counter() - t0, index

        # Alternate the two, `repeat` times each, and keep each one's best time: on a shared 2-core box the
        # load moves by the second, and the best time is the least disturbed measurement of each.
        ref_times, herd_times = [], []
        for k in range(args.repeat):
            ref_s, ref_tokens = reference()
            ref_times.append(ref_s)
            herd_s, index = herd(k)
            herd_times.append(herd_s)
            shutil.rmtree(work / f"packed{k}")
        ref_s, herd_s = min(ref_times), min(herd_times)
        ray.shutdown()

        # herd's rows also hold BOS/EOS per document (+2 tokens each): compare on the text tokens
        herd_tokens = index["tokens"] - 2 * len(texts)
        assert herd_tokens == ref_tokens, (herd_tokens, ref_tokens)
        ref_tps, herd_tps = ref_tokens / ref_s, herd_tokens / herd_s
        result = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "command": "python " + " ".join(sys.argv),
            "cpus": os.cpu_count(),
            "load_avg_1m": os.getloadavg()[0],
            "text_mb": round(sum(len(t) for t in texts) / 1e6, 1),
            "documents": len(texts),
            "tokens": ref_tokens,
            "rows": index["rows"],
            "reference_s": round(ref_s, 2),
            "herd_s": round(herd_s, 2),
            "reference_runs_s": [round(t, 2) for t in ref_times],
            "herd_runs_s": [round(t, 2) for t in herd_times],
            "reference_tokens_per_s": round(ref_tps),
            "herd_tokens_per_s": round(herd_tps),
            "overhead": round(ref_tps / herd_tps - 1, 3),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
