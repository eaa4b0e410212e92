"""Each suite on tiny models: numbers in range with intervals; rigged and uniform models where the answer is known."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import SEQ_LEN, VOCAB, random_model, small_eval_config

from herd.eval import (
    HerdLM,
    compare,
    evaluate_arithmetic,
    evaluate_image,
    evaluate_knowledge,
    evaluate_multiple_choice,
    evaluate_needle,
    evaluate_perplexity,
    heatmap,
    read_items,
)
from herd.eval.multiple_choice import encode_pair

torch.set_num_threads(1)


def in_range(score, lo: float = 0.0, hi: float = 1.0) -> None:
    assert lo <= score.lo <= score.value <= score.hi <= hi, score
    assert score.n > 0


class LookupModel(torch.nn.Module):
    """A model rigged to continue only the given token sequences: it puts +20 on the token that follows the
    current prefix in one of ``golds`` and nothing elsewhere (no gold matches: uniform logits)."""

    def __init__(self, golds: list[list[int]], vocab: int):
        super().__init__()
        self.config = SimpleNamespace(pad_token_id=12, vision=None)
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab
        self.next: dict[tuple[int, ...], int] = {}
        for g in golds:
            for t in range(1, len(g)):
                self.next[tuple(g[:t])] = g[t]

    def forward(self, ids: torch.Tensor, *a, **kw) -> SimpleNamespace:
        logits = torch.zeros(*ids.shape, self.vocab)
        for b, row in enumerate(ids.tolist()):
            for t in range(len(row)):
                nxt = self.next.get(tuple(row[: t + 1]))
                if nxt is not None:
                    logits[b, t, nxt] = 20.0
        return SimpleNamespace(logits=logits)


def test_multiple_choice_rigged_is_perfect_uniform_is_chance(eval_data, tiny_lm) -> None:
    items = read_items(eval_data["evalset"], "multiple_choice")
    golds = []
    for it in items:
        ctx, cont = encode_pair(tiny_lm, it["prompt"], " " + it["choices"][it["gold"]])
        golds.append(ctx + cont)
    rigged = HerdLM(LookupModel(golds, VOCAB), tiny_lm.tokenizer, batch_size=5)  # odd batch: padding is exercised
    r = evaluate_multiple_choice(rigged, items)
    assert r.metrics["acc"].value == 1.0 and r.metrics["acc_norm"].value == 1.0
    uniform = evaluate_multiple_choice(HerdLM(LookupModel([], VOCAB), tiny_lm.tokenizer), items)
    assert uniform.extra["chance"] == 0.25
    assert uniform.metrics["acc"].lo <= 0.25 <= uniform.metrics["acc"].hi
    real = evaluate_multiple_choice(tiny_lm, items)
    in_range(real.metrics["acc"])
    assert len(real.samples) == len(items) and all(len(s["loglik"]) == 4 for s in real.samples)


def test_knowledge_and_arithmetic_on_a_random_model(eval_data, tiny_lm) -> None:
    k = evaluate_knowledge(tiny_lm, read_items(eval_data["evalset"], "knowledge"), max_new_tokens=6)
    in_range(k.metrics["exact_match"])
    assert all("prediction" in s for s in k.samples)
    cfg = small_eval_config().arithmetic
    items = read_items(eval_data["evalset"], "arithmetic")
    assert len(items) == 40 and {i["source"] for i in items} == {"tasks", "generated"}  # topped up, held out
    a = evaluate_arithmetic(tiny_lm, items, cfg, sampled=True, seed=3)
    in_range(a.metrics["pass_at_1"])
    in_range(a.metrics["sampled_pass_at_2"])
    assert a.metrics["sampled_pass_at_2"].n == cfg.pass_k_items
    chat = evaluate_arithmetic(tiny_lm, items[:5], cfg, chat=True, sampled=False)
    assert chat.extra["prompt"] == "chat" and chat.metrics["pass_at_1"].n == 5


def test_generation_is_batch_invariant(eval_data, tiny_lm) -> None:
    """Right padding is exact: a prompt's greedy answer does not depend on what it is batched with."""
    prompts = tiny_lm.encode_batch([it["prompt"] for it in read_items(eval_data["evalset"], "knowledge")[:6]])
    together = tiny_lm.generate(prompts, max_new_tokens=5)
    alone = [tiny_lm.generate([p], max_new_tokens=5)[0] for p in prompts]
    assert together == alone
    ll_batch = tiny_lm.loglikelihood([(p[:-2], p[-2:]) for p in prompts])
    ll_alone = [tiny_lm.loglikelihood([(p[:-2], p[-2:])])[0] for p in prompts]
    assert all(math.isclose(x[0], y[0], abs_tol=1e-4) for x, y in zip(ll_batch, ll_alone))


def test_needle_grid_and_heatmap(eval_data, tiny_lm, tmp_path: Path) -> None:
    items = read_items(eval_data["evalset"], "needle")
    cfg = small_eval_config().needle
    r = evaluate_needle(tiny_lm, items)
    g = r.extra["grid"]
    assert g["lengths"] == cfg.lengths(SEQ_LEN) == [64, 128]
    assert g["depths"] == cfg.depths
    assert len(g["acc"]) == len(cfg.depths) and all(len(row) == 2 for row in g["acc"])
    in_range(r.metrics["acc"])
    assert {"len_64", "len_128"} <= set(r.metrics)
    # haystacks are sized in tokens: each prompt is within a sentence of its cell's length
    for it in items:
        assert 0.7 * it["context_length"] <= it["n_tokens"] <= it["context_length"] + 4, it["n_tokens"]
    png = heatmap(r, tmp_path / "niah.png", seq_len=SEQ_LEN)
    from PIL import Image

    assert Image.open(png).size[0] > 200


def test_perplexity_of_a_random_model_is_near_the_vocabulary(eval_data, tiny_lm, tmp_path: Path) -> None:
    texts = [i["question"] + " " + i["answer"] for i in read_items(eval_data["evalset"], "arithmetic")]
    rows = [([0] + ids)[: SEQ_LEN + 1] for ids in tiny_lm.encode_batch(texts)]
    pq.write_table(pa.table({"input_ids": rows, "loss_mask": [[0] + [1] * (len(r) - 1) for r in rows]}),
                   tmp_path / "shard-00000.parquet")
    r = evaluate_perplexity(tiny_lm, tmp_path, rows=16, resamples=200)
    in_range(r.metrics["loss"], 0, 50)
    assert abs(r.metrics["loss"].value - math.log(VOCAB)) < 1.0  # an untrained model is near uniform
    assert r.metrics["perplexity"].value == pytest.approx(math.exp(r.metrics["loss"].value))
    # paired comparison against itself: no difference
    assert compare(r, r).delta == 0


def test_image_suite_skips_text_models_and_scores_vision_models(eval_data, tiny_lm) -> None:
    from herd.model.vision_config import VisionConfig

    items = read_items(eval_data["evalset"], "image")
    skipped = evaluate_image(tiny_lm, items)
    assert skipped.skipped and "vision" in skipped.skipped and not skipped.metrics
    vision = VisionConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=128,
                          image_size=28, patch_size=14, pixel_shuffle_ratio=0.5, projector_input_dim=48,
                          projector_output_dim=48, vision_output_dim=48)
    lm = HerdLM(random_model(vision=vision), tiny_lm.tokenizer)
    r = evaluate_image(lm, items[:4], max_new_tokens=4)
    assert r.skipped is None and r.extra["chance"] == 0.1
    in_range(r.metrics["acc"])
