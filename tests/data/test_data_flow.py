"""The data flow end to end on a real local Ray + MLflow (sqlite), on local disk and on s3:// (moto server)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from data_corpora import good_docs, write_broken_jsonl, write_parquet_source
from mlflow.tracking import MlflowClient

from herd.data.reader import ShardReader
from herd.data.tokenizer import load_tokenizer
from herd.flows.data import build
from herd.platform.config import RuntimeConfig, load_recipe
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime

STEPS = ["data.synthetic", "data.clean", "data.tokenizer", "data.pack"]
SMALL = [  # a small synthetic corpus keeps the source tests quick; the tiny test uses the real defaults
    "data.synthetic.n_entities=40",
    "data.synthetic.n_arithmetic_train=200",
    "data.synthetic.n_needle_docs=10",
    "data.synthetic.n_filler_docs=50",
    "data.synthetic.n_chat=100",
    "data.synthetic.n_images=50",
    "data.tokenizer.vocab_size=1024",
]


def runner(home) -> Runner:
    return Runner(Runtime(RuntimeConfig(home=str(home))), progress=False)


@pytest.mark.slow
def test_tiny_flow_finishes_then_reuses(ray_local, herd_home):
    recipe = load_recipe(None)
    r = runner(herd_home)
    t0 = time.monotonic()
    first = r.run(build(recipe))
    took = time.monotonic() - t0
    assert sorted(first.executed) == sorted(STEPS) and took < 120, took

    t0 = time.monotonic()
    second = r.run(build(recipe))
    assert second.executed == [] and sorted(second.reused) == sorted(STEPS)
    assert time.monotonic() - t0 < 10 and second.outputs == first.outputs

    out = first.outputs
    pretrain = r.store.get(out["data.pack"]["pretrain"])
    meta = pretrain.manifest.meta
    assert meta["seq_len"] == 256 and 300_000 < meta["tokens"] < 3_000_000  # enough for a visible loss drop
    batch = next(iter(ShardReader(str(pretrain.local_path()), batch_size=4)))
    assert batch["input_ids"].shape == (4, 257)
    assert int(batch["input_ids"].max()) < recipe.data.tokenizer.vocab_size

    tok = load_tokenizer(r.store.get(out["data.tokenizer"]["tokenizer"]).local_path())
    assert tok.get_vocab_size() == recipe.data.tokenizer.vocab_size
    sft = next(iter(ShardReader(str(r.store.get(out["data.pack"]["sft"]).local_path()), batch_size=2)))
    ids, mask = sft["input_ids"][0].tolist(), sft["loss_mask"][0].tolist()
    trained = tok.decode([i for i, m in zip(ids, mask, strict=True) if m], skip_special_tokens=False)
    assert "<|eot|>" in trained and "<|header_start|>" not in trained and "user" not in trained
    images = r.store.get(out["data.pack"]["images"])
    img = next(iter(ShardReader(str(images.local_path()), batch_size=2)))
    n_patch = int((img["input_ids"] == 9).sum())
    assert img["pixel_values"].shape[1:] == (3, 32, 32) and n_patch == 4 * img["pixel_values"].shape[0]

    tasks = r.store.get(out["data.synthetic"]["tasks"]).local_path()
    assert {p.stem for p in tasks.glob("*.jsonl")} >= {
        "knowledge_eval",
        "arithmetic_eval",
        "rl_prompts",
        "needle_eval",
        "preferences",
        "images_eval",
    }
    client = MlflowClient(r.rt.tracking_uri)
    pack_run = client.get_run(first.records["data.pack"].run_id)
    assert pack_run.data.metrics["pretrain.tokens"] == meta["tokens"]
    # datasets carry their CLI names; the step's outputs show on its own run (context "output"), and the
    # tokenizer is not a dataset
    by_context: dict[str, set[str]] = {}
    for d in pack_run.inputs.dataset_inputs:
        context = next(t.value for t in d.tags if t.key == "mlflow.data.context")
        by_context.setdefault(context, set()).add(d.dataset.name)
    assert by_context == {"input": {"data.clean.corpus"},
                          "output": {f"data.pack.{o}" for o in ("pretrain", "pretrain_val", "sft", "images")}}


def _write_sources(root, seed):
    """A directory with the broken jsonl and a parquet file under root; returns the expected counts."""
    (root / "jsonl").mkdir(parents=True)
    want = write_broken_jsonl(root / "jsonl" / "broken.jsonl", seed=seed)
    want_pq = write_parquet_source(root / "extra.parquet", dup_of=good_docs(10, seed=seed)[0], seed=seed + 1)
    return want, want_pq


@pytest.mark.slow
def test_flow_over_jsonl_and_parquet_sources_local_and_s3(ray_local, herd_home, tmp_path, s3_uri):
    """One flow over synthetic + a local jsonl directory and parquet file + the same kinds in a bucket."""
    import s3fs

    local, remote = tmp_path / "local", tmp_path / "remote"
    want, want_pq = _write_sources(local, seed=1)
    want_s3, want_pq_s3 = _write_sources(remote, seed=11)
    fs = s3fs.S3FileSystem()
    fs.put(str(remote / "jsonl" / "broken.jsonl"), f"{s3_uri}/jsonl/broken.jsonl")
    fs.put(str(remote / "extra.parquet"), f"{s3_uri}/extra.parquet")
    shutil.rmtree(remote)  # the flow must read the bucket
    sources = [
        {"uri": "synthetic"},
        {"uri": str(local / "jsonl"), "name": "broken", "weight": 2.0},
        {"uri": str(local / "extra.parquet"), "name": "extra"},
        {"uri": f"{s3_uri}/jsonl/", "name": "s3broken"},
        {"uri": f"{s3_uri}/extra.parquet", "name": "s3extra", "format": "parquet"},
    ]
    recipe = load_recipe(None, [*SMALL, f"data.sources={json.dumps(sources)}"])
    r = runner(herd_home)
    result = r.run(build(recipe))
    assert sorted(result.executed) == sorted(STEPS)

    clean_rec = result.records["data.clean"]
    corpus = r.store.get(clean_rec.outputs["corpus"])
    stats = json.loads((corpus.local_path() / "stats.json").read_text())
    for name, w, w_pq in (("broken", want, want_pq), ("s3broken", want_s3, want_pq_s3)):
        st = stats["sources"][name]
        assert st["rows_read"] == w["rows_read"] and st["documents"] == w["documents"] and st["chats"] == 1
        assert st["rejects"] == {k: v for k, v in w.items() if k not in ("rows_read", "documents", "chats")}
        pq_name = name.replace("broken", "extra")
        assert stats["sources"][pq_name]["documents"] == w_pq["documents"]
        assert stats["sources"][pq_name]["rejects"] == {"missing_field": 1, "exact_dup": 1}
    assert corpus.manifest.meta["rejects"]["near_dup"] >= 4
    rejects = (corpus.local_path() / "rejects.jsonl").read_text()
    assert f"{local}/jsonl/broken.jsonl:17" in rejects  # the 5 MB line, with its origin
    assert f"{s3_uri}/jsonl/broken.jsonl:17" in rejects

    client = MlflowClient(r.rt.tracking_uri)
    run = client.get_run(clean_rec.run_id)
    assert run.data.metrics["source.broken.rejects.invalid_json"] == 2
    assert run.data.metrics["source.s3broken.rejects.undecodable"] == 1
    roots = json.loads(run.data.tags["herd.sources"])  # lineage roots: each raw file with its sha256
    uris = {s["uri"] for s in roots}
    assert uris == {
        f"{local}/jsonl/broken.jsonl",
        f"{local}/extra.parquet",
        f"{s3_uri}/jsonl/broken.jsonl",
        f"{s3_uri}/extra.parquet",
    }
    assert all(len(s["digest"]) == 64 for s in roots)

    # mixing weight 2.0: each of broken's 10 clean documents enters training twice (minus validation picks)
    tok = load_tokenizer(r.store.get(result.outputs["data.tokenizer"]["tokenizer"]).local_path())
    pretrain = r.store.get(result.outputs["data.pack"]["pretrain"]).local_path()
    text = "".join(
        tok.decode(b["input_ids"][i].tolist())
        for b in ShardReader(str(pretrain), batch_size=64, loop=False, shuffle=False)
        for i in range(b["input_ids"].shape[0])
    )
    counts = [text.count(d[:120]) for d in good_docs(10, seed=1)]
    assert set(counts) <= {0, 2} and counts.count(2) >= 7  # 0 only where the doc was drawn for validation
    assert all(text.count(d[:120]) in (0, 1) for d in good_docs(10, seed=11))  # weight 1.0

    # trainers read shard sets straight from a bucket when the store is remote
    val = r.store.get(result.outputs["data.pack"]["pretrain_val"]).local_path()
    fs.put(str(val), f"{s3_uri}/packed_val", recursive=True)
    remote_rows = [b["input_ids"] for b in ShardReader(f"{s3_uri}/packed_val", batch_size=4, loop=False)]
    local_rows = [b["input_ids"] for b in ShardReader(str(val), batch_size=4, loop=False)]
    assert len(remote_rows) == len(local_rows) > 0
    assert all((a == b).all() for a, b in zip(remote_rows, local_rows, strict=True))
