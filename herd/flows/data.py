"""The data flow: synthetic corpus -> cleaned corpus -> tokenizer -> packed shards (+ held-out task sets).

    herd flow data                      # tiny recipe: ~1 minute on 2 cores; seconds when nothing changed
    herd flow data --set data.sources='[synthetic, s3://bucket/corpus/]'

Steps (outputs are artifacts in the store; trainers read them with herd.data.reader.ShardReader):
  data.synthetic  the built-in corpus (documents, chats, digit images) and the held-out task sets
  data.clean      every source read, normalized, filtered, deduped; rejects written aside with their origin
  data.tokenizer  byte-level BPE with Llama 4's special tokens and chat template (HF layout)
  data.pack       Ray Data tokenize-and-pack: pretrain, pretrain_val, sft and images shard sets

Raw sources are lineage roots (URI + sha256); row, token and reject counts go to each step's MLflow run and
into the artifacts' manifests. The clean step's cache key includes a listing of the sources (size + ETag or
mtime), so a changed source file re-runs it; an unchanged pipeline is reused from the cache.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from herd.platform.runner import Resources, Step, StepContext

STEP_MODULES = ["herd.data.config", "herd.data.sources"]


def _commit(ctx: StepContext, name: str, scratch: Path, fmt: str, meta: dict[str, Any]) -> None:
    """Move a finished scratch directory into the step's declared output (meta goes into its manifest)."""
    out = ctx.output_dir(name, format=fmt, **meta)
    for item in scratch.iterdir():
        shutil.move(str(item), out / item.name)


def synthesize(ctx: StepContext) -> None:
    from herd.data.synthetic import build_synthetic, write_synthetic

    corpus = build_synthetic(ctx.config)
    with tempfile.TemporaryDirectory() as raw, tempfile.TemporaryDirectory() as tasks:
        counts = write_synthetic(corpus, raw, tasks)
        train = {k: counts[k] for k in ("documents", "chats", "images")}
        _commit(ctx, "corpus", Path(raw), "jsonl", {"rows": train})
        _commit(
            ctx, "tasks", Path(tasks), "jsonl", {"rows": {k: v for k, v in counts.items() if k not in train}}
        )
    ctx.log_metrics({f"synthetic.{k}": v for k, v in counts.items()}, step=0)


def clean(ctx: StepContext) -> None:
    from herd.data.clean import clean_sources, collect_images
    from herd.data.config import SYNTHETIC, SourceConfig
    from herd.data.sources import resolve_sources

    sources = [SourceConfig(**s) for s in ctx.config["data.sources"]]
    synthetic = ctx.inputs["synthetic"].local_path()
    resolved = resolve_sources(sources, str(synthetic))
    for src, (_, files) in zip(sources, resolved, strict=True):
        if src.uri != SYNTHETIC:
            for f in files:
                ctx.log_source(f.url, f.sha256, name=f"{src.display_name}:{f.url.rsplit('/', 1)[-1]}")
    with tempfile.TemporaryDirectory() as tmp:
        stats = clean_sources(resolved, ctx.config["data.cleaning"], tmp)
        stats["images"] = (
            collect_images(synthetic / "images.jsonl", tmp) if any(s.uri == SYNTHETIC for s in sources) else 0
        )
        meta = {k: stats[k] for k in ("rows_read", "documents", "chats", "images", "chars", "rejects")}
        _commit(ctx, "corpus", Path(tmp), "parquet", meta)
    metrics = {k: stats[k] for k in ("rows_read", "documents", "chats", "images", "chars")}
    metrics |= {f"rejects.{r}": n for r, n in stats["rejects"].items()}
    for source, st in stats["sources"].items():
        name = re.sub(r"[^\w\-. /]", "_", source)  # MLflow metric names allow only these characters
        metrics |= {f"source.{name}.{k}": st[k] for k in ("rows_read", "documents", "chats")}
        metrics |= {f"source.{name}.rejects.{r}": n for r, n in st["rejects"].items()}
    ctx.log_metrics(metrics, step=0)


def train_tokenizer(ctx: StepContext) -> None:
    from herd.data.tokenizer import corpus_texts, save_tokenizer, train_tokenizer

    corpus = ctx.inputs["corpus"].local_path()
    tok = train_tokenizer(corpus_texts(corpus), ctx.config)
    learned = sum(1 for t in tok.get_vocab() if not t.startswith("<|reserved_special_token_"))
    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(tok, tmp, ctx.config)
        _commit(
            ctx,
            "tokenizer",
            Path(tmp),
            "hf-tokenizer",
            {"vocab_size": tok.get_vocab_size(), "learned": learned},
        )
    ctx.log_metrics({"vocab_size": tok.get_vocab_size(), "learned_tokens": learned}, step=0)


def pack(ctx: StepContext) -> None:
    from herd.data.pack import SETS, pack_corpus

    corpus = ctx.inputs["corpus"].local_path()
    tokenizer = ctx.inputs["tokenizer"].local_path()
    scratch = Path(tempfile.mkdtemp(prefix="herd-pack-"))
    try:
        dirs = {name: scratch / name for name in SETS}
        index = pack_corpus(
            corpus, tokenizer, ctx.config["data.packing"], dirs, ctx.config["data.sources.weights"]
        )
        metrics: dict[str, float] = {}
        for name in SETS:
            info = {k: index[name][k] for k in ("rows", "tokens", "target_tokens", "seq_len")}
            _commit(ctx, name, dirs[name], "parquet", info)
            metrics |= {f"{name}.{k}": v for k, v in info.items() if k != "seq_len"}
        ctx.log_metrics(metrics, step=0)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def build(recipe: Any) -> list[Step]:
    from herd.data.config import SYNTHETIC
    from herd.data.sources import fingerprint

    data = recipe.data
    listing = {s.display_name: fingerprint(s) for s in data.sources if s.uri != SYNTHETIC}
    return [
        Step(
            "data.synthetic",
            synthesize,
            config=data.synthetic,
            config_path="data.synthetic",
            outputs={"corpus": "dataset", "tasks": "dataset"},
            resources=Resources(cpus=1),
            code=[
                "herd.data.synthetic",
                *(
                    f"herd.data.synthetic.{m}"
                    for m in ("knowledge", "arithmetic", "needles", "chat", "images")
                ),
            ],
            description="generate the synthetic corpus and the held-out task sets",
        ),
        Step(
            "data.clean",
            clean,
            config={
                "data.sources": [s.model_dump(mode="json") for s in data.sources],
                "data.sources.listing": listing,
                "data.cleaning": data.cleaning,
            },
            inputs={"synthetic": "data.synthetic.corpus"},
            outputs={"corpus": "dataset"},
            resources=Resources(cpus=1),
            code=[*STEP_MODULES, "herd.data.clean", "herd.data.dedupe"],
            description="read, normalize, filter and dedupe every source",
        ),
        Step(
            "data.tokenizer",
            train_tokenizer,
            config=data.tokenizer,
            config_path="data.tokenizer",
            inputs={"corpus": "data.clean.corpus"},
            outputs={"tokenizer": "tokenizer"},
            resources=Resources(cpus=1),
            code=["herd.data.tokenizer"],
            description="train the byte-level BPE tokenizer",
        ),
        Step(
            "data.pack",
            pack,
            config={
                "data.packing": data.packing,
                "data.sources.weights": {s.display_name: s.weight for s in data.sources},
            },
            inputs={"corpus": "data.clean.corpus", "tokenizer": "data.tokenizer.tokenizer"},
            outputs={"pretrain": "dataset", "pretrain_val": "dataset", "sft": "dataset", "images": "dataset"},
            # In the driver: the step hands off to Ray Data, whose reader tasks and tokenizer actor need the
            # CPUs a Ray task of its own would hold (2-CPU deadlock, see the Ray notes).
            in_driver=True,
            code=["herd.data.pack", "herd.data.tokenizer", "herd.data.synthetic.images"],
            description="tokenize and pack with Ray Data into fixed-length parquet shards",
        ),
    ]
