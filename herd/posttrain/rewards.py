"""Verifiable rewards for RL and the judge: arithmetic (herd's check_answer), knowledge exact match, format, and a
user's own `module:function`.

    correct = is_correct(prompt, "12 + 3 = 15. The answer is 15.")      # prompt: a Prompt (capability, answer)
    r = reward(prompt, completion, stopped=True, format_weight=0.1)     # correctness + format bonus

A user reward is `fn(completion: str, row: dict) -> float` (named `module:function` in the recipe and imported
when the recipe loads); its value is the correctness score, in [0, 1] by convention (>= 0.5 counts as solved).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from herd.data.synthetic.arithmetic import check_answer

# arithmetic's format is the worked answer the SFT data teaches: an expression with an operator, its result, and
# the same number stated as the answer. "The answer is N." alone let RL on the tiny student collapse into
# "9 = 5. The answer is 5.": guessing the small answers of division problems without copying the operands, which
# raised its sampled pass rate on the RL prompts (0.08 -> 0.26) while greedy held-out accuracy fell 0.087 -> 0.062
# The worked answer may take steps between the question's expression and the result ("26 + 47 = 60 + 13 = 73.",
# herd.data.synthetic.arithmetic.stepped); only the first expression's operands are checked (below)
_EXPR = r"-?\d+(?:\s*[-+*/]\s*-?\d+)+"
_WORKED = re.compile(rf"^\s*(?P<expr>{_EXPR})\s*=\s*(?:{_EXPR}\s*=\s*)*(?P<n>-?\d+)\.\s*The answer is (?P=n)\.\s*$")
# ... and its operands are the question's numbers, in the question's order (every synthetic kind states them in
# the order its expression uses them). The tiny models' bottleneck is copying those numbers (copy rate 0.08-0.5,
# docs/benchmarks.md "posttrain"): a worked answer with made-up operands ("19 + 28 = 92" for "26 stickers ...
# 47 more") earned the bonus, so groups with no correct answer had no signal towards copying; grounded, they do
_INT = re.compile(r"\d+")  # unsigned: in an expression a '-' is the operator


@dataclass
class Prompt:
    """One RL / judge prompt: the chat messages to complete, the reference answer and its capability."""

    prompt_id: str
    messages: list[dict[str, str]]
    answer: str
    capability: str  # arithmetic | knowledge | <user tag>
    reward_fn: str | None = None  # user 'module:function' (rows from sources with `reward`)
    row: dict[str, Any] = field(default_factory=dict)


def normalize(text: str) -> str:
    return " ".join(text.strip().lower().rstrip(".").split())


def is_correct(p: Prompt, completion: str) -> float:
    """Correctness in [0, 1]: arithmetic by the last integer, knowledge by normalized exact match."""
    if p.reward_fn is not None:
        from herd.posttrain.config import resolve_callable

        return float(resolve_callable(p.reward_fn)(completion=completion, row=p.row))  # type: ignore[operator]
    if p.capability == "arithmetic":
        return float(check_answer(completion, p.answer))
    return float(normalize(completion) == normalize(p.answer))


def question_numbers(p: Prompt) -> list[int]:
    """The integers of the prompt's last user message, in order (what a worked answer's operands must copy)."""
    user = [m["content"] for m in p.messages if m.get("role") == "user"]
    return [int(x) for x in _INT.findall(user[-1])] if user else []


def worked_operands(completion: str) -> list[int] | None:
    """The operands of a worked arithmetic answer ('a + b [= steps] = N. The answer is N.'), None when it is not one."""
    m = _WORKED.match(completion)
    return None if m is None else [int(x) for x in _INT.findall(m["expr"])]


def format_ok(p: Prompt, completion: str, stopped: bool) -> bool:
    """The answer ended with the stop token; arithmetic is worked, 'a + b [= steps] = N. The answer is N.', with the
    question's numbers as its operands (when the question states numbers)."""
    if not stopped:
        return False
    if p.capability != "arithmetic":
        return len(completion) <= 200
    operands = worked_operands(completion)
    if operands is None:
        return False
    asked = question_numbers(p)
    return not asked or operands == asked


def reward(p: Prompt, completion: str, *, stopped: bool, format_weight: float,
           require_work: bool = False, format_needs_correct: bool = False) -> tuple[float, float]:
    """(total reward, correctness). Format only adds on top of correctness, so a wrong answer never wins by
    format alone while a right one that also stops cleanly scores highest. With `require_work`, an arithmetic
    answer is correct only when its worked expression copies the question's numbers: the tiny SFT student's
    correct greedy answers were all guesses (0 of 200 with the question's operands: "45 / 7 = 11" for 21 / 7),
    and RL reinforced those instead of the copying that real answers need. With `format_needs_correct` only a
    correct answer earns the format bonus: else a group of wrong answers that differ in format alone has reward
    variance, survives the zero-variance filter, and group normalization scales its 0.1 to advantages as large
    as a correct answer's, so RL reinforces well-formatted wrong results ("26 + 47 = 60 + 13 = 83.")."""
    c = is_correct(p, completion)
    worked = format_ok(p, completion, stopped=True)  # the format, whether or not the answer stopped
    if require_work and p.capability == "arithmetic" and p.reward_fn is None and not worked:
        c = 0.0
    earns = stopped and worked and (c > 0 or not format_needs_correct)
    return c + format_weight * float(earns), c


__all__ = ["Prompt", "format_ok", "is_correct", "normalize", "question_numbers", "reward", "worked_operands"]
