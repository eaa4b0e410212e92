"""Each post-training stage measured against its parent on the same held-out items (paired).

    res = score_items(model, tok, items)                       # greedy answers, 0/1 per item
    cmp = stage_vs_parent(model, parent, tok, items)           # accuracies with Wilson CIs + exact McNemar p

Items are held-out task rows: arithmetic_eval {question, answer} (check_answer) and knowledge_eval
{question, answer} (normalized exact match), asked as a single user turn, decoded greedily up to <|eot|>.
Statistics come from herd.eval.stats (Wilson intervals, exact McNemar on the discordant pairs).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from herd.data.tokenizer import EOT_ID
from herd.posttrain.data import encode_prompt
from herd.posttrain.rewards import Prompt, is_correct


def eval_prompts(rows: Sequence[dict[str, Any]], capability: str, limit: int) -> list[Prompt]:
    return [Prompt(f"{capability}-eval-{i}", [{"role": "user", "content": str(r["question"])}], str(r["answer"]),
                   capability) for i, r in enumerate(rows[:limit])]


def score_items(model: nn.Module, tok: Any, items: Sequence[Prompt], *, max_new_tokens: int = 40,
                batch_size: int = 64) -> list[int]:
    """1 where the greedy answer is correct."""
    from herd.serve.engine import SamplingParams, generate_once

    model.eval()
    prompts = [encode_prompt(tok, p.messages) for p in items]
    if not prompts:
        return []
    # continuous batching: an answer that stops early frees its slot for the next item
    gens = generate_once(model, prompts, SamplingParams(max_tokens=max_new_tokens, temperature=0.0,
                                                        stop_token_ids=[EOT_ID], ignore_eos=True),
                         max_num_seqs=batch_size, max_num_batched_tokens=max(512, max(map(len, prompts)) +
                                                                              max_new_tokens))
    return [int(is_correct(p, tok.decode([t for t in g.token_ids if t != EOT_ID], skip_special_tokens=True))
                >= 0.5) for p, g in zip(items, gens, strict=True)]


def compare(child: Sequence[int], parent: Sequence[int], prefix: str) -> dict[str, float]:
    """Metrics ``<prefix>.acc`` ...: child and parent accuracy with 95% Wilson bounds, the delta and the exact
    McNemar p-value. Dotted, not "/": on MLflow's run page they join "Model metrics" after the loss charts instead of
    forming sections drawn ahead of them."""
    from herd.eval.stats import mcnemar, wilson

    n = len(child)
    c, p = wilson(sum(child), n), wilson(sum(parent), n)
    return {f"{prefix}.acc": c.value, f"{prefix}.acc_lo": c.lo, f"{prefix}.acc_hi": c.hi,
            f"{prefix}.parent_acc": p.value, f"{prefix}.parent_acc_lo": p.lo, f"{prefix}.parent_acc_hi": p.hi,
            f"{prefix}.delta": c.value - p.value, f"{prefix}.mcnemar_p": mcnemar(parent, child),
            f"{prefix}.n": float(n)}


def stage_vs_parent(model: nn.Module, parent: nn.Module, tok: Any,
                    suites: dict[str, Sequence[Prompt]]) -> dict[str, float]:
    """Paired comparison per suite (e.g. {"arithmetic": [...], "knowledge": [...]})."""
    out: dict[str, float] = {}
    for name, items in suites.items():
        out.update(compare(score_items(model, tok, items), score_items(parent, tok, items), f"vs_parent.{name}"))
    return out


__all__ = ["compare", "eval_prompts", "score_items", "stage_vs_parent"]
