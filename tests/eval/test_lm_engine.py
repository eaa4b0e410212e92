"""The eval adapter on the serve engine: greedy answers and scores equal the static path's (herd.model.generate
and a plain forward) on the same prompts, the stop token excluded on both."""

from __future__ import annotations

import math

import torch
from conftest import random_model

from herd.eval import HerdLM, read_items
from herd.eval.lm import EOT_IDS

torch.set_num_threads(1)


def test_engine_greedy_answers_equal_static_generation(eval_data, tiny_lm) -> None:
    items = read_items(eval_data["evalset"], "knowledge")[:12] + read_items(eval_data["evalset"], "arithmetic")[:12]
    prompts = tiny_lm.encode_batch([it["prompt"] for it in items])
    static = HerdLM(tiny_lm.model, tiny_lm.tokenizer, batch_size=8, generation="static")
    engine = HerdLM(tiny_lm.model, tiny_lm.tokenizer, batch_size=8, generation="engine")
    for stops in (EOT_IDS, static.line_stops):  # line stops end most rows early: the stop token is dropped
        want = static.generate(prompts, max_new_tokens=10, stop_tokens=stops)
        got = engine.generate(prompts, max_new_tokens=10, stop_tokens=stops)
        assert got == want
        assert not any(t in stops for g in got for t in g)
    assert any(len(g) < 10 for g in got)  # some rows did stop early, so stripping was exercised


def test_engine_scores_equal_the_forward(eval_data) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(eval_data["tokenizer"] / "tokenizer.json"))
    model = random_model(seed=4)
    fwd = HerdLM(model, tok, batch_size=8)
    eng = HerdLM(model, tok, batch_size=8, scoring="engine")
    rows = fwd.encode_batch([it["prompt"] for it in read_items(eval_data["evalset"], "knowledge")[:10]], bos=True)
    reqs = [(r[:-3], r[-3:]) for r in rows]
    for (a, ga), (b, gb) in zip(fwd.loglikelihood(reqs), eng.loglikelihood(reqs), strict=True):
        assert math.isclose(a, b, abs_tol=1e-3) and ga == gb
    masks = [[0] * 4 + [1] * (len(r) - 4) for r in rows]
    for (a, na), (b, nb) in zip(fwd.token_nll(rows, masks), eng.token_nll(rows, masks), strict=True):
        assert math.isclose(a, b, rel_tol=1e-4) and na == nb
