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


def test_mixed_training_qa_asks_about_training_people_only():
    qa_corpus = build_synthetic(CFG.model_copy(update={"knowledge_qa": True, "n_images": 0}))
    qa_docs = [d["text"] for d in qa_corpus.documents if d["family"] == "knowledge_qa"]
    train_people = {r["entity"] for r in qa_corpus.tasks["knowledge_train_qa"]}
    assert len(qa_docs) == len(train_people) == 80 - round(0.25 * 80)
    qa_text = "\n".join(qa_docs)
    for row in qa_corpus.tasks["knowledge_train_qa"]:  # every training fact is asked, in the evaluation's format
        assert f"Question: {row['question']}\nAnswer: {row['answer']}." in qa_text
    text = training_text(qa_corpus)
    for row in qa_corpus.tasks["knowledge_eval"]:
        assert row["question"] not in text
    # the switch adds documents and changes no other family's
    plain = [d for d in qa_corpus.documents if d["family"] != "knowledge_qa"]
    assert plain == build_synthetic(CFG.model_copy(update={"n_images": 0})).documents


def test_answers_are_checkable(corpus):
    for row in corpus.tasks["arithmetic_eval"][:50]:
        assert check_answer(f"so the answer is {row['answer']}", row["answer"])
    assert extract_answer("3 + 4 = 7. The answer is 7.") == 7 and extract_answer("none") is None
    assert not check_answer("The answer is 8.", "7")
    needle = corpus.tasks["needle_eval"]
    assert needle[0]["depth"] == 0.0 and needle[-1]["depth"] == 1.0
    assert all(d["chosen"] != d["rejected"] for d in corpus.tasks["preferences"])


def test_worked_solutions_take_true_steps():
    """Every side of a stepped solution ("26 + 47 = 60 + 13 = 73.") equals the answer, the first side is the
    question's expression, and the answer is stated last: the steps teach arithmetic, never a wrong fact."""
    import re

    import numpy as np

    from herd.data.synthetic.arithmetic import make_problems, stepped

    assert stepped("26 + 47", 73) == "26 + 47 = 60 + 13 = 73. The answer is 73."
    assert stepped("52 - 17", 35) == "52 - 17 = 42 - 7 = 35. The answer is 35."
    assert stepped("26 + 47 - 30", 43) == "26 + 47 - 30 = 60 + 13 - 30 = 73 - 30 = 43. The answer is 43."
    assert stepped("7 * 12", 84) == "7 * 12 = 84. The answer is 84."
    kinds = set()
    for p in make_problems(3000, np.random.default_rng(5), steps=True):
        body, stated = re.fullmatch(r"(.*)\. The answer is (-?\d+)\.", p.solution()).groups()
        sides = body.split(" = ")
        assert sides[0] == p.expression and int(sides[-1]) == int(stated) == p.answer
        assert all(eval(side) == p.answer for side in sides), p.solution()  # digits and + - * / only
        kinds.add((p.expression.count(" "), len(sides)))
    assert {(2, 3), (4, 4)} <= kinds  # two-operand sums/differences and three-operand ones did take steps
    plain = make_problems(5, np.random.default_rng(5))
    assert [p.solution() for p in plain] == [f"{p.expression} = {p.answer}. The answer is {p.answer}." for p in plain]
    assert [p.question for p in plain] == [p.question for p in make_problems(5, np.random.default_rng(5), steps=True)]


def test_digit_tiles_are_normalized_like_llama4():
    tile = digit_tile(np.full(64, 16), 32)
    assert tile.shape == (3, 32, 32) and tile.dtype == np.float32
    assert np.allclose(tile, 1.0) and np.allclose(digit_tile(np.zeros(64), 16), -1.0)
