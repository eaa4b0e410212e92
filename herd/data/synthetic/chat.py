"""Chat conversations (SFT), preference pairs (DPO) and verifiable prompts (RL) built on the other families.

SFT chats ask about the training entities' facts and training arithmetic problems, plus a little small
talk; preference pairs prefer the correct short answer over a wrong one or a padded one; RL prompts are
held-out arithmetic problems with their integer answer (checked by `arithmetic.check_answer`).
"""

from __future__ import annotations

import numpy as np

from herd.data.synthetic import knowledge
from herd.data.synthetic.arithmetic import Problem

SYSTEM = "You are a helpful assistant. Answer briefly and correctly."
SMALL_TALK = [
    ("Hello!", "Hello! How can I help you today?"),
    ("Thank you.", "You are welcome."),
    ("Who are you?", "I am a small assistant trained by herd."),
    (
        "Can you help me with a math problem?",
        "Of course. Tell me the problem and I will solve it step by step.",
    ),
    ("Good morning.", "Good morning! What would you like to know?"),
]
PADDING = (
    "Well, that is a very interesting question and there are many things one could say about it, "
    "so let me think about it for a while before answering. "
)


def knowledge_turn(person: knowledge.Person, attribute: str) -> tuple[str, str]:
    q, a = knowledge.question(person, attribute)
    return q, f"{a}."


def arithmetic_turn(p: Problem) -> tuple[str, str]:
    return p.question, p.solution()


def conversation(turns: list[tuple[str, str]], rng: np.random.Generator) -> list[dict[str, str]]:
    msgs: list[dict[str, str]] = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": SYSTEM})
    for q, a in turns:
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return msgs


def make_chats(
    people: list[knowledge.Person], problems: list[Problem], n: int, rng: np.random.Generator
) -> list[dict[str, object]]:
    """`n` SFT conversations of one or two turns over the training people and problems."""
    chats: list[dict[str, object]] = []
    seen: set[str] = set()
    tries = 0
    while len(chats) < n and tries < 20 * n:
        # Distinct conversations only: repeats would be dropped by exact dedupe anyway.
        tries += 1
        turns = []
        for _ in range(1 + int(rng.random() < 0.3)):
            r = rng.random()
            if r < 0.5 and people:
                person = people[int(rng.integers(len(people)))]
                attr = knowledge.ATTRIBUTES[int(rng.integers(len(knowledge.ATTRIBUTES)))]
                turns.append(knowledge_turn(person, attr))
            elif r < 0.95 and problems:
                turns.append(arithmetic_turn(problems[int(rng.integers(len(problems)))]))
            else:
                turns.append(SMALL_TALK[int(rng.integers(len(SMALL_TALK)))])
        msgs = conversation(turns, rng)
        key = repr(msgs)
        if key not in seen:
            seen.add(key)
            chats.append({"messages": msgs})
    return chats


def make_preferences(
    people: list[knowledge.Person], problems: list[Problem], n: int, rng: np.random.Generator
) -> list[dict[str, object]]:
    """`n` pairs {prompt (messages), chosen, rejected}: correct short answer over a wrong or padded one."""
    pairs = []
    for _ in range(n):
        if rng.random() < 0.5 and problems:
            p = problems[int(rng.integers(len(problems)))]
            prompt, chosen = arithmetic_turn(p)
            wrong = p.answer + int(rng.choice([-3, -2, -1, 1, 2, 3]))
            rejected = p.with_answer(wrong).solution()  # the same work, a wrong result
        else:
            person = people[int(rng.integers(len(people)))]
            attr = knowledge.ATTRIBUTES[int(rng.integers(len(knowledge.ATTRIBUTES)))]
            prompt, chosen = knowledge_turn(person, attr)
            rejected = PADDING + chosen
        kind = "padded" if rejected.startswith(PADDING) else "wrong"
        pairs.append(
            {
                "prompt": [{"role": "user", "content": prompt}],
                "chosen": chosen,
                "rejected": rejected,
                "kind": kind,
            }
        )
    return pairs
