"""Arithmetic word problems with checkable integer answers (training text, evaluation, RL rewards).

Problems come from one seeded stream of distinct questions, split into eval / RL / train, so an eval or RL
question never appears in the training text. `extract_answer` and `check_answer` are the reward the RL stage
and the evaluator share: the last integer in a completion must equal the answer.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import numpy as np

NAMES = [
    "Ava",
    "Ben",
    "Chloe",
    "Dev",
    "Ella",
    "Finn",
    "Gia",
    "Hiro",
    "Isla",
    "Jack",
    "Kira",
    "Liam",
    "Maya",
    "Noah",
    "Omar",
    "Pia",
    "Ravi",
    "Sara",
    "Theo",
    "Vera",
    "Wes",
    "Zoe",
]
ITEMS = [
    "apples",
    "marbles",
    "stamps",
    "pencils",
    "cookies",
    "books",
    "coins",
    "shells",
    "stickers",
    "cards",
    "eggs",
    "plums",
]
CONTAINERS = ["boxes", "bags", "jars", "baskets", "crates", "packs"]


@dataclass(frozen=True)
class Problem:
    question: str
    expression: str
    answer: int
    steps: bool = False  # the worked solution in steps (`stepped`) or in one ("26 + 47 = 73. The answer is 73.")

    def solution(self) -> str:
        if self.steps:
            return stepped(self.expression, self.answer)
        return f"{self.expression} = {self.answer}. The answer is {self.answer}."

    def with_answer(self, answer: int) -> Problem:
        """The same problem and work with another result (a wrong answer for a preference pair)."""
        return dataclasses.replace(self, answer=answer)


def _tens_ones(a: int, b: int) -> str:
    return f"{a // 10 * 10 + b // 10 * 10} + {a % 10 + b % 10}"


def stepped(expression: str, answer: int) -> str:
    """The worked solution, in steps a small model can take one at a time: "26 + 47 = 60 + 13 = 73. The answer is
    73." (tens and ones added apart), "52 - 17 = 42 - 7 = 35." (the subtrahend's tens first), "26 + 47 - 30 =
    60 + 13 - 30 = 73 - 30 = 43."; products and quotients (small tables, learned as facts) stay one step.

    Why: a 2.6 M-parameter model writes a sum's digits most significant first, so one-step "26 + 47 = 73" asks it
    to carry before it writes; in steps each number is a one-digit fact or a copy. Trained on the same tokens for
    6 minutes it solved 0.335 of held-out problems instead of 0.217, addition 0.30 instead of 0.06 and
    subtraction 0.28 instead of 0.01 (benchmarks/arith_probe.py --format, docs/benchmarks.md "posttrain")."""
    nums = [int(x) for x in re.findall(r"\d+", expression)]
    ops = re.findall(r"[-+*/]", expression)
    steps: list[str] = []
    if ops == ["+"] and max(nums) >= 10:
        steps = [_tens_ones(*nums)]
    elif ops == ["-"] and nums[1] >= 10:
        steps = [f"{nums[0] - nums[1] // 10 * 10} - {nums[1] % 10}"]
    elif ops == ["+", "-"]:
        a, b, c = nums
        steps = [f"{_tens_ones(a, b)} - {c}", f"{a + b} - {c}"] if max(a, b) >= 10 else [f"{a + b} - {c}"]
    return " = ".join([expression, *steps, str(answer)]) + f". The answer is {answer}."


def _problem(rng: np.random.Generator) -> Problem:
    name = NAMES[rng.integers(len(NAMES))]
    other = NAMES[rng.integers(len(NAMES))]
    item = ITEMS[rng.integers(len(ITEMS))]
    kind = int(rng.integers(5))
    a, b, c = (int(x) for x in rng.integers(2, 60, size=3))
    if kind == 0:
        return Problem(
            f"{name} has {a} {item}. {name} gets {b} more. How many {item} does {name} have now?",
            f"{a} + {b}",
            a + b,
        )
    if kind == 1:
        a, b = max(a, b) + 1, min(a, b)
        return Problem(
            f"{name} had {a} {item} and gave {b} of them to {other}. How many {item} are left?",
            f"{a} - {b}",
            a - b,
        )
    if kind == 2:
        box = CONTAINERS[rng.integers(len(CONTAINERS))]
        a, b = a % 12 + 2, b % 12 + 2
        return Problem(
            f"There are {a} {box} with {b} {item} in each. How many {item} are there in total?",
            f"{a} * {b}",
            a * b,
        )
    if kind == 3:
        b = b % 9 + 2
        q = a % 12 + 2
        return Problem(
            f"{name} shares {q * b} {item} equally among {b} friends. How many {item} does each get?",
            f"{q * b} / {b}",
            q,
        )
    return Problem(
        f"{name} has {a} {item}, buys {b} more and then loses {min(c, a + b)}. How many {item} remain?",
        f"{a} + {b} - {min(c, a + b)}",
        a + b - min(c, a + b),
    )


def make_problems(n: int, rng: np.random.Generator, *, steps: bool = False) -> list[Problem]:
    """`n` distinct problems (distinct question text), whose solutions are worked in steps or in one."""
    seen: set[str] = set()
    out: list[Problem] = []
    tries = 0
    while len(out) < n:
        p = _problem(rng)
        p = dataclasses.replace(p, steps=steps)
        tries += 1
        if tries > 50 * n + 1000:
            raise ValueError(f"cannot generate {n} distinct arithmetic problems; lower the synthetic sizes")
        if p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


def worked_example(p: Problem) -> str:
    """A training document: the problem with its worked solution."""
    return f"Question: {p.question}\nSolution: {p.solution()}"


_INT = re.compile(r"-?\d+")


def extract_answer(completion: str) -> int | None:
    """The last integer in a completion, or None."""
    found = _INT.findall(completion.replace(",", ""))
    return int(found[-1]) if found else None


def check_answer(completion: str, answer: int | str) -> bool:
    """RL reward / eval check: the completion's last integer equals the answer."""
    got = extract_answer(completion)
    return got is not None and got == int(answer)
