"""The built-in synthetic corpus: seeded, deterministic, sized by `SyntheticConfig`.

    from herd.data.synthetic import build_synthetic, write_synthetic
    corpus = build_synthetic(cfg.synthetic)
    write_synthetic(corpus, raw_dir, tasks_dir)

Training side (goes through cleaning, tokenizer and packing like any source):
  documents  pretraining text: biographies (plus the training people's Q&A with `knowledge_qa`), worked
             arithmetic, needle documents with their answer, prose
  chats      SFT conversations over training entities and training problems
  images     digit chats with their 8x8 pixels (training split)
Held-out side (task sets for later stages; never in training text, tested):
  knowledge_eval, arithmetic_eval, rl_prompts, needle_eval, images_eval; plus preferences (DPO pairs built
  from training facts/problems) and knowledge_train_qa (questions about training entities, for reference).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from herd.data.config import SyntheticConfig
from herd.data.synthetic import arithmetic, chat, images, knowledge, needles

TASK_SETS = (
    "knowledge_eval",
    "knowledge_train_qa",
    "arithmetic_eval",
    "rl_prompts",
    "needle_eval",
    "preferences",
    "images_eval",
)


@dataclass
class SyntheticCorpus:
    documents: list[dict[str, object]] = field(default_factory=list)
    chats: list[dict[str, object]] = field(default_factory=list)
    images: list[dict[str, object]] = field(default_factory=list)
    tasks: dict[str, list[dict[str, object]]] = field(default_factory=dict)


def build_synthetic(cfg: SyntheticConfig) -> SyntheticCorpus:
    """Generate the whole corpus from cfg.seed (each family has its own child seed, so sizes are independent)."""
    seeds = np.random.SeedSequence(cfg.seed).spawn(6)
    rng_k, rng_a, rng_n, rng_c, rng_i, rng_p = (np.random.default_rng(s) for s in seeds)
    out = SyntheticCorpus(tasks={name: [] for name in TASK_SETS})

    # knowledge: every entity's facts are in the pretraining text; questions split by entity.
    people = knowledge.make_world(cfg.n_entities, rng_k)
    n_held = max(1, round(cfg.heldout_entity_fraction * len(people)))
    held, train_people = people[:n_held], people[n_held:]
    for person in people:
        for _ in range(cfg.paraphrases):
            out.documents.append({"text": knowledge.biography(person, rng_k), "family": "knowledge"})
    if cfg.knowledge_qa:  # mixed training: questions about the training people beside the biographies
        for person in train_people:
            out.documents.append({"text": knowledge.qa_document(person, rng_k), "family": "knowledge_qa"})
    for split, group in (("knowledge_eval", held), ("knowledge_train_qa", train_people)):
        for person in group:
            for attr in knowledge.ATTRIBUTES:
                q, a = knowledge.question(person, attr)
                out.tasks[split].append(
                    {"question": q, "answer": a, "entity": person.name, "attribute": attr}
                )

    # arithmetic: one stream of distinct problems, split eval / rl / train.
    problems = arithmetic.make_problems(
        cfg.n_arithmetic_eval + cfg.n_rl_prompts + cfg.n_arithmetic_train, rng_a, steps=cfg.arithmetic_steps
    )
    ev, rl = (
        problems[: cfg.n_arithmetic_eval],
        problems[cfg.n_arithmetic_eval : cfg.n_arithmetic_eval + cfg.n_rl_prompts],
    )
    train_problems = problems[cfg.n_arithmetic_eval + cfg.n_rl_prompts :]
    out.tasks["arithmetic_eval"] = [{"question": p.question, "answer": str(p.answer)} for p in ev]
    out.tasks["rl_prompts"] = [{"prompt": p.question, "answer": str(p.answer)} for p in rl]
    # Worksheets of several problems: single short templated problems would be near-duplicates of each other.
    for i in range(0, len(train_problems), 4):
        sheet = "\n\n".join(arithmetic.worked_example(p) for p in train_problems[i : i + 4])
        out.documents.append({"text": f"Practice problems.\n\n{sheet}", "family": "arithmetic"})

    # needles: distinct keys, held-out ones at evenly spread depths.
    keys = needles.make_keys(cfg.n_needle_docs + cfg.n_needle_eval, rng_n)
    for i, (key, value) in enumerate(keys[: cfg.n_needle_eval]):
        depth = i / max(1, cfg.n_needle_eval - 1)
        doc = needles.needle_document(key, value, depth, cfg.needle_doc_words, rng_n)
        out.tasks["needle_eval"].append(
            {
                "context": doc,
                "question": needles.needle_question(key),
                "answer": value,
                "depth": depth,
                "n_words": len(doc.split()),
            }
        )
    for key, value in keys[cfg.n_needle_eval :]:
        doc = needles.needle_document(key, value, float(rng_n.random()), cfg.needle_doc_words, rng_n)
        text = f"{doc}\nQuestion: {needles.needle_question(key)}\nAnswer: {value}"
        out.documents.append({"text": text, "family": "needle"})
    for _ in range(cfg.n_filler_docs):
        out.documents.append({"text": needles.prose(int(rng_n.integers(60, 240)), rng_n), "family": "prose"})

    # chats, preferences.
    out.chats = chat.make_chats(train_people, train_problems, cfg.n_chat, rng_c)
    out.tasks["preferences"] = chat.make_preferences(train_people, train_problems, cfg.n_preferences, rng_p)

    # images: a seeded subset of the 1797 digits, split train / eval.
    if cfg.n_images:
        pixels, labels = images.load_digits_uint8()
        pick = rng_i.permutation(len(labels))[: cfg.n_images]
        n_eval = round(cfg.image_eval_fraction * len(pick))
        for j, idx in enumerate(pick):
            if j < n_eval:
                out.tasks["images_eval"].append(
                    {
                        "image": pixels[idx].reshape(-1).astype(int).tolist(),
                        "label": int(labels[idx]),
                        "question": images.QUESTIONS[0],
                        "answer": str(int(labels[idx])),
                        "index": int(idx),
                    }
                )
            else:
                sample = images.image_sample(pixels[idx], int(labels[idx]), rng_i)
                out.images.append({**sample, "index": int(idx)})
    return out


def _write_jsonl(path: Path, rows: list[dict[str, object]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_synthetic(corpus: SyntheticCorpus, raw_dir: str | Path, tasks_dir: str | Path) -> dict[str, int]:
    """Write the training side as jsonl under raw_dir and each task set as tasks_dir/<name>.jsonl; return row counts."""
    raw, tasks = Path(raw_dir), Path(tasks_dir)
    raw.mkdir(parents=True, exist_ok=True)
    tasks.mkdir(parents=True, exist_ok=True)
    _write_jsonl(raw / "documents.jsonl", corpus.documents)
    _write_jsonl(raw / "chats.jsonl", corpus.chats)
    _write_jsonl(raw / "images.jsonl", corpus.images)
    counts = {"documents": len(corpus.documents), "chats": len(corpus.chats), "images": len(corpus.images)}
    for name, rows in corpus.tasks.items():
        _write_jsonl(tasks / f"{name}.jsonl", rows)
        counts[name] = len(rows)
    return counts
