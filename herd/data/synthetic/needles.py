"""Generated prose and needle-in-a-haystack documents.

`prose` writes grammatical filler from a small generative grammar (general language for pretraining).
A needle document is filler with one sentence "The secret code for <key> is <value>." inserted at a
controlled relative depth; training needle documents end with the question and answer, held-out ones keep
them apart for the evaluator (context, question, answer, depth).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ADJ = [
    "quiet",
    "bright",
    "old",
    "small",
    "green",
    "heavy",
    "narrow",
    "gentle",
    "distant",
    "golden",
    "careful",
    "busy",
    "silver",
    "wooden",
    "ancient",
    "patient",
    "sudden",
    "cold",
    "warm",
    "hidden",
]
NOUN = [
    "river",
    "garden",
    "lantern",
    "village",
    "teacher",
    "window",
    "harbor",
    "forest",
    "painter",
    "bridge",
    "market",
    "engine",
    "orchard",
    "letter",
    "mountain",
    "sailor",
    "library",
    "kitchen",
    "meadow",
    "clock",
    "tower",
    "farmer",
    "student",
    "island",
    "road",
]
VERB = [
    "watches",
    "carries",
    "follows",
    "repairs",
    "paints",
    "visits",
    "remembers",
    "finds",
    "crosses",
    "builds",
    "opens",
    "describes",
    "measures",
    "guards",
    "cleans",
]
PLACE = [
    "the hill",
    "the old mill",
    "the harbor",
    "the square",
    "the station",
    "the school",
    "the bakery",
    "the coast",
]
TIME = [
    "In the morning",
    "At dusk",
    "Every winter",
    "Later that day",
    "Once a year",
    "Before the storm",
    "After the rain",
]
TEMPLATES = [
    "The {a} {n} {v} the {n2} near {p}.",
    "{t}, a {a} {n} {v} a {a2} {n2}.",
    "Nobody knew why the {n} {v} the {n2}, but it was {a}.",
    "{t}, the {n2} near {p} looked {a}.",
    "A {a} {n} and a {a2} {n2} met at {p}.",
    "The {n} {v} every {n2} it sees, slowly and with a {a} smile.",
]
KEY_WORDS = [
    "amber",
    "basalt",
    "cobalt",
    "delta",
    "ember",
    "falcon",
    "glacier",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lotus",
    "meteor",
    "nimbus",
    "onyx",
    "pepper",
    "quartz",
    "raven",
    "saffron",
    "tundra",
    "umber",
    "velvet",
    "willow",
    "xenon",
    "yonder",
    "zephyr",
]


def sentence(rng: np.random.Generator) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]
    return pick(TEMPLATES).format(
        a=pick(ADJ), a2=pick(ADJ), n=pick(NOUN), n2=pick(NOUN), v=pick(VERB), p=pick(PLACE), t=pick(TIME)
    )


def prose(n_words: int, rng: np.random.Generator) -> str:
    """Filler paragraphs of about `n_words` words."""
    out: list[str] = []
    words = 0
    while words < n_words:
        s = sentence(rng)
        out.append(s)
        words += len(s.split())
        if rng.random() < 0.15:
            out.append("\n\n")
    return " ".join(out).replace(" \n\n ", "\n\n").strip()


def make_keys(n: int, rng: np.random.Generator) -> list[tuple[str, str]]:
    """`n` distinct (key, value) pairs: two-word keys, six-digit values."""
    keys: dict[str, str] = {}
    limit = len(KEY_WORDS) ** 2
    if n > limit:
        raise ValueError(f"at most {limit} distinct needle keys; lower synthetic.n_needle_docs/n_needle_eval")
    while len(keys) < n:
        k = f"{KEY_WORDS[rng.integers(len(KEY_WORDS))]} {KEY_WORDS[rng.integers(len(KEY_WORDS))]}"
        if k not in keys:
            keys[k] = str(int(rng.integers(100000, 1000000)))
    return list(keys.items())


def needle_question(key: str) -> str:
    return f"What is the secret code for {key}?"


def needle_document(key: str, value: str, depth: float, n_words: int, rng: np.random.Generator) -> str:
    """Filler of ~n_words words with the needle sentence at relative `depth` (0 = start, 1 = end)."""
    sentences = [sentence(rng) for _ in range(max(1, n_words // 10))]
    pos = round(depth * len(sentences))
    sentences.insert(pos, f"The secret code for {key} is {value}.")
    return " ".join(sentences)


def token_haystack(key: str, value: str, depth: float, n_tokens: int, count_tokens: Callable[[str], int],
                   rng: np.random.Generator) -> str:
    """Filler of about `n_tokens` tokens (as `count_tokens` counts them) with the needle sentence at relative
    `depth`, placed between sentences (the NIAH convention: the needle never splits a sentence)."""
    needle = f"The secret code for {key} is {value}."
    budget = n_tokens - count_tokens(" " + needle)
    sentences: list[str] = []
    used = 0
    while True:
        s = sentence(rng)
        cost = count_tokens(" " + s)  # tokens of a sentence in running text (after a space)
        if used + cost > budget:  # may leave no filler at all when the needle alone fills the length
            break
        sentences.append(s)
        used += cost
    sentences.insert(round(depth * len(sentences)), needle)
    return " ".join(sentences)
