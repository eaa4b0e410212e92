"""The eval set: every item every suite scores, with its exact prompt text, built once per pipeline.

    counts = build_evalset(tasks_dir, tokenizer_dir, out_dir, cfg, seq_len=256, corpus_dir=corpus)
    items = read_items(out_dir, "arithmetic")            # [{"id", "question", "answer", "prompt", ...}]

herd's suites and the lm-eval task YAMLs (herd/eval/tasks/) read the same jsonl files, so both score exactly
the same items with the same prompts. Files (one jsonl per suite, plus ``index.json``):

    knowledge.jsonl        closed-book questions on held-out entities: question, answer, prompt, chat_prompt
    multiple_choice.jsonl  the same questions with 4 options (answer + 3 distractors of the same kind): choices, gold
    arithmetic.jsonl       held-out word problems (>= cfg.arithmetic.n_items): question, answer, prompt, chat_prompt
    needle.jsonl           the NIAH grid: context_length x depth x samples_per_cell; prompt, answer, n_tokens
    images.jsonl           held-out digit images: image (8x8, 0..16), label, question, answer

Prompts are full texts starting with ``<|begin_of_text|>``. ``prompt`` is the completion format the pretraining
text uses (``Question: ...\\nSolution:`` / ``\\nAnswer:``); ``chat_prompt`` is the chat template with the
generation header, for chat-tuned models. When the task file holds fewer arithmetic problems than asked, the
set is topped up with problems generated from a separate seed, minus any whose question occurs in the training
corpus or the other task sets: still held out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from herd.eval.config import EvaluateConfig

BOT = "<|begin_of_text|>"
SUITE_FILES = {"knowledge": "knowledge.jsonl", "multiple_choice": "multiple_choice.jsonl",
               "arithmetic": "arithmetic.jsonl", "needle": "needle.jsonl", "image": "images.jsonl"}


def completion_prompt(question: str, answer_word: str = "Answer") -> str:
    return f"{BOT}Question: {question}\n{answer_word}:"


def chat_prompt(question: str) -> str:
    from herd.data.tokenizer import render_chat

    return render_chat([{"role": "user", "content": question}], add_generation_prompt=True)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    n = 0
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_items(evalset_dir: str | Path, suite: str) -> list[dict[str, Any]]:
    """The items of ``suite`` in an eval-set directory."""
    if suite not in SUITE_FILES:
        raise ValueError(f"unknown suite {suite!r}; one of {', '.join(SUITE_FILES)}")
    return _read_jsonl(Path(evalset_dir) / SUITE_FILES[suite])


def _training_questions(corpus_dir: Path | None) -> set[str]:
    """Every line of the training text and every chat message (``Question: `` stripped): generated eval problems
    found here are dropped, so a topped-up problem was never seen in training (a set: one pass, O(1) lookups)."""
    if corpus_dir is None:
        return set()
    import pyarrow.parquet as pq

    seen: set[str] = set()

    def add(text: str) -> None:
        for line in text.split("\n"):
            line = line.strip()
            seen.add(line)
            if line.startswith("Question: "):
                seen.add(line[len("Question: "):])

    docs, chats = corpus_dir / "documents.parquet", corpus_dir / "chats.parquet"
    if docs.exists():
        for text in pq.read_table(docs, columns=["text"]).column("text").to_pylist():
            add(text)
    if chats.exists():
        for conv in pq.read_table(chats, columns=["messages"]).column("messages").to_pylist():
            for m in json.loads(conv):
                content = m.get("content")
                parts = [content] if isinstance(content, str) else [c.get("text", "") for c in content or []
                                                                     if isinstance(c, dict)]
                for part in parts:
                    add(part)
    return seen


def _arithmetic(tasks: Path, corpus_dir: Path | None, cfg: EvaluateConfig) -> list[dict[str, Any]]:
    from herd.data.synthetic.arithmetic import make_problems

    rows = [{**r, "source": "tasks"} for r in _read_jsonl(tasks / "arithmetic_eval.jsonl")]
    want = cfg.arithmetic.n_items
    if len(rows) < want:
        taken = {r["question"] for r in rows} | {r.get("prompt") for r in _read_jsonl(tasks / "rl_prompts.jsonl")}
        train = _training_questions(corpus_dir)
        # a separate seed stream from the data flow's (which seeds from data.synthetic.seed via SeedSequence)
        rng = np.random.default_rng([cfg.seed, 0xE7A1])
        for p in make_problems(3 * (want - len(rows)) + 100, rng):
            if len(rows) >= want:
                break
            if p.question in taken or p.question in train:
                continue
            taken.add(p.question)
            rows.append({"question": p.question, "answer": str(p.answer), "source": "generated"})
    out = []
    for i, r in enumerate(rows[:want]):
        out.append({"id": f"arith-{i:05d}", "question": r["question"], "answer": str(r["answer"]),
                    "source": r["source"], "prompt": completion_prompt(r["question"], "Solution"),
                    "chat_prompt": chat_prompt(r["question"])})
    return out


def _knowledge(tasks: Path, cfg: EvaluateConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    from herd.data.synthetic.knowledge import distractors

    rows = _read_jsonl(tasks / "knowledge_eval.jsonl")[: cfg.knowledge_items]
    rng = np.random.default_rng([cfg.seed, 0x4B43])
    qa, mc = [], []
    for i, r in enumerate(rows):
        base = {"question": r["question"], "answer": r["answer"], "entity": r.get("entity"),
                "attribute": r.get("attribute"), "prompt": completion_prompt(r["question"]),
                "chat_prompt": chat_prompt(r["question"])}
        qa.append({"id": f"know-{i:05d}", **base})
        options = [r["answer"], *distractors(r["attribute"], r["answer"], 3, rng)]
        order = rng.permutation(4)
        choices = [options[j] for j in order]
        mc.append({"id": f"mc-{i:05d}", **base, "choices": choices, "gold": int(np.argmax(order == 0))})
    return qa, mc


def _needle(cfg: EvaluateConfig, seq_len: int, tokenizer_dir: Path) -> list[dict[str, Any]]:
    from tokenizers import Tokenizer

    from herd.data.synthetic import needles

    tok = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    def count(text: str) -> int:
        return len(tok.encode(text, add_special_tokens=False).ids)

    rng = np.random.default_rng([cfg.seed, 0x4E49])
    grid = cfg.needle
    n_keys = len(grid.lengths(seq_len)) * len(grid.depths) * grid.samples_per_cell
    keys = needles.make_keys(min(n_keys, len(needles.KEY_WORDS) ** 2), rng)
    rows, k = [], 0
    for length in grid.lengths(seq_len):
        for depth in grid.depths:
            for s in range(grid.samples_per_cell):
                key, value = keys[k % len(keys)]
                k += 1
                tail = f"\nQuestion: {needles.needle_question(key)}\nAnswer:"
                budget = length - 1 - count(tail)  # 1 for <|begin_of_text|>
                hay = needles.token_haystack(key, value, depth, budget, count, rng)
                prompt = f"{BOT}{hay}{tail}"
                rows.append({"id": f"niah-{length}-{int(depth * 100):03d}-{s}", "context_length": length,
                             "depth": depth, "key": key, "answer": value, "prompt": prompt,
                             "n_tokens": 1 + count(hay + tail)})
    return rows


def build_evalset(tasks_dir: str | Path, tokenizer_dir: str | Path, out_dir: str | Path, cfg: EvaluateConfig, *,
                  seq_len: int, corpus_dir: str | Path | None = None) -> dict[str, int]:
    """Write the eval set (see the module docstring) into ``out_dir``; returns item counts per suite."""
    tasks, out = Path(tasks_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not (tasks / "knowledge_eval.jsonl").exists():
        raise FileNotFoundError(f"{tasks} holds no knowledge_eval.jsonl: pass the data flow's tasks artifact "
                                "(data.synthetic.tasks)")
    qa, mc = _knowledge(tasks, cfg)
    counts = {"knowledge": _write_jsonl(out / SUITE_FILES["knowledge"], qa),
              "multiple_choice": _write_jsonl(out / SUITE_FILES["multiple_choice"], mc),
              "arithmetic": _write_jsonl(out / SUITE_FILES["arithmetic"],
                                         _arithmetic(tasks, Path(corpus_dir) if corpus_dir else None, cfg)),
              "needle": _write_jsonl(out / SUITE_FILES["needle"], _needle(cfg, seq_len, Path(tokenizer_dir))),
              "image": _write_jsonl(out / SUITE_FILES["image"],
                                    ({"id": f"img-{i:05d}", **r} for i, r in
                                     enumerate(_read_jsonl(tasks / "images_eval.jsonl")[: cfg.image_items])))}
    (out / "index.json").write_text(json.dumps({"counts": counts, "seq_len": seq_len, "seed": cfg.seed,
                                                "needle_lengths": cfg.needle.lengths(seq_len),
                                                "needle_depths": cfg.needle.depths}, indent=2) + "\n")
    return counts


__all__ = ["BOT", "SUITE_FILES", "build_evalset", "chat_prompt", "completion_prompt", "read_items"]
