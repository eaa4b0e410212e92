"""The synthetic corpus: deterministic, checkable, and its held-out sets never appear in training text."""

from __future__ import annotations

import numpy as np
import pytest

from herd.data.config import SyntheticConfig
from herd.data.synthetic import build_synthetic
from herd.data.synthetic.arithmetic import check_answer, extract_answer
from herd.data.synthetic.images import digit_tile
from herd.data.tokenizer import render_chat

CFG = SyntheticConfig(
    n_entities=80,
    n_arithmetic_train=800,
    n_needle_docs=30,
    n_filler_docs=100,
    n_chat=400,
    n_preferences=100,
    n_images=200,
)


@pytest.fixture(scope="module")
def corpus():
    return build_synthetic(CFG)


def training_text(corpus) -> str:
    """Everything any trainer sees: pretraining documents, SFT chats, image chats, DPO pairs."""
    parts = [d["text"] for d in corpus.documents]
    parts += [render_chat(c["messages"]) for c in corpus.chats]
    parts += [render_chat(c["messages"]) for c in corpus.images]
    return "\n".join(parts)


def test_deterministic_and_seeded(corpus):
    again = build_synthetic(CFG)
    assert again.documents == corpus.documents and again.tasks == corpus.tasks and again.chats == corpus.chats
    other = build_synthetic(CFG.model_copy(update={"seed": 1}))
    assert other.documents != corpus.documents
    fams = {d["family"] for d in corpus.documents}
    assert fams == {"knowledge", "arithmetic", "needle", "prose"}


def test_heldout_sets_never_in_training_text(corpus):
    text = training_text(corpus)
    tasks = corpus.tasks
    assert len(tasks["knowledge_eval"]) == round(0.25 * 80) * 5
    for row in tasks["knowledge_eval"]:
        assert row["question"] not in text  # the closed-book question is never shown...
        assert row["entity"] in text  # ...but the fact's entity is in the pretraining biographies
    eval_entities = {r["entity"] for r in tasks["knowledge_eval"]}
    chat_text = "\n".join(render_chat(c["messages"]) for c in corpus.chats)
    assert not any(e in chat_text for e in eval_entities)  # held-out entities are never asked about in SFT
    for row in tasks["arithmetic_eval"]:
        assert row["question"] not in text
    for row in tasks["rl_prompts"]:
        assert row["prompt"] not in text
    for row in tasks["needle_eval"]:
        assert row["question"] not in text and row["context"] not in text
        assert f"is {row['answer']}." in row["context"]
    train_images = {r["index"] for r in corpus.images}
    assert train_images.isdisjoint(r["index"] for r in tasks["images_eval"])
    for row in tasks["preferences"]:  # DPO pairs are built from training facts and problems only
        assert not any(e in row["prompt"][0]["content"] for e in eval_entities)


def test_answers_are_checkable(corpus):
    for row in corpus.tasks["arithmetic_eval"][:50]:
        assert check_answer(f"so the answer is {row['answer']}", row["answer"])
    assert extract_answer("3 + 4 = 7. The answer is 7.") == 7 and extract_answer("none") is None
    assert not check_answer("The answer is 8.", "7")
    needle = corpus.tasks["needle_eval"]
    assert needle[0]["depth"] == 0.0 and needle[-1]["depth"] == 1.0
    assert all(d["chosen"] != d["rejected"] for d in corpus.tasks["preferences"])


def test_digit_tiles_are_normalized_like_llama4():
    tile = digit_tile(np.full(64, 16), 32)
    assert tile.shape == (3, 32, 32) and tile.dtype == np.float32
    assert np.allclose(tile, 1.0) and np.allclose(digit_tile(np.zeros(64), 16), -1.0)
