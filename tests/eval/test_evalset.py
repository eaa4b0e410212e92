"""The eval set: one file per suite, prompts in training format, arithmetic topped up with held-out problems."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from conftest import SEQ_LEN, small_eval_config

from herd.data.synthetic.arithmetic import make_problems
from herd.eval.evalset import _training_questions, build_evalset, read_items


def test_training_problems_are_never_generated_eval_items(eval_data, tmp_path: Path) -> None:
    import numpy as np

    cfg = small_eval_config(arithmetic={"n_items": 60})
    # the generator's own stream for the top-up, then put its first problems into the "training" corpus
    first = make_problems(10, np.random.default_rng([cfg.seed, 0xE7A1]))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = [f"Practice problems.\n\nQuestion: {p.question}\nSolution: {p.solution()}" for p in first[:5]]
    chats = [json.dumps([{"role": "user", "content": p.question}, {"role": "assistant", "content": "x"}])
             for p in first[5:]]
    pq.write_table(pa.table({"text": docs}), corpus / "documents.parquet")
    pq.write_table(pa.table({"messages": chats}), corpus / "chats.parquet")
    assert {p.question for p in first} <= _training_questions(corpus)
    build_evalset(eval_data["tasks"], eval_data["tokenizer"], tmp_path / "es", cfg, seq_len=SEQ_LEN,
                  corpus_dir=corpus)
    items = read_items(tmp_path / "es", "arithmetic")
    assert len(items) == 60 and len({i["question"] for i in items}) == 60
    assert not {p.question for p in first} & {i["question"] for i in items}
    rl = {json.loads(line)["prompt"] for line in (eval_data["tasks"] / "rl_prompts.jsonl").read_text().splitlines()}
    assert not rl & {i["question"] for i in items}


def test_items_carry_prompts_in_both_formats(eval_data) -> None:
    es = eval_data["evalset"]
    a = read_items(es, "arithmetic")[0]
    assert a["prompt"] == f"<|begin_of_text|>Question: {a['question']}\nSolution:"
    assert a["chat_prompt"].endswith("<|header_start|>assistant<|header_end|>\n\n")
    mc = read_items(es, "multiple_choice")
    assert all(len(m["choices"]) == 4 and m["choices"][m["gold"]] == m["answer"] for m in mc)
    assert len({m["gold"] for m in mc}) > 1  # the right option is not always in the same place
    index = json.loads((es / "index.json").read_text())
    assert index["needle_lengths"] == [64, 128] and index["counts"]["arithmetic"] == 40
