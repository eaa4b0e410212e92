"""Difficulty judging: which SFT examples are easy (dropped) and how hard each RL prompt is (the ledger's seed).

    judged = judge_examples(judge_model, tok, examples, cfg.judge)        # pass@k + reference loss per example
    keep = select_hard(judged, easy_fraction=0.5)                          # per capability, drop the easiest half
    ledger = judge_ledger(judged, keep, judge_digest, rl_judged)           # the versioned difficulty ledger

Score (Llama 4 dropped >50% of SFT data that a Llama judge tagged easy; Kimi k1.5 / Olmo 3 grade by pass rate):
- verifiable turns (arithmetic, knowledge QA): pass@k = share of k samples at the RL temperature that are
  correct; ties (common: a weak judge solves everything or nothing) are broken by the judge's per-token loss of
  the reference answer, so a judge that solves nothing still ranks examples by loss, never at random;
- other turns: that loss alone.
Easy = high pass rate, then low loss. The easiest `easy_fraction` of EACH capability is dropped, so the kept set
keeps the capability mix (a judge good at chat but bad at arithmetic would otherwise drop all chat).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from herd.data.tokenizer import EOT_ID, newline_ids
from herd.posttrain.config import JudgeConfig
from herd.posttrain.data import Example, encode_prompt, encode_sft, pad_rows
from herd.posttrain.rewards import Prompt, is_correct
from herd.posttrain.rollout import sample_engine


@dataclass
class Judgment:
    prompt_id: str
    capability: str
    passes: int | None  # correct samples of k (None: not verifiable)
    k: int
    loss: float  # the judge's mean per-token loss of the reference answer (nan when there is none)

    @property
    def pass_rate(self) -> float | None:
        return None if self.passes is None else self.passes / self.k

    def easiness(self) -> tuple[float, float]:
        """Sort key, larger = easier: pass rate first (0 when not verifiable), then lower loss."""
        return (self.pass_rate or 0.0, -self.loss)


@torch.no_grad()
def reference_loss(model: nn.Module, tok: Any, conversations: Sequence[Sequence[dict[str, Any]]],
                   batch_size: int = 32, max_len: int = 512) -> list[float]:
    """Mean per-token CE of each conversation's assistant tokens (+ <|eot|>) under `model`."""
    model.eval()
    rows = encode_sft(tok, conversations, max_len)
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))  # similar lengths together: little padding
    out = [float("nan")] * len(rows)
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        b = pad_rows([rows[j] for j in idx])
        ids, mask = b["input_ids"], b["loss_mask"][:, 1:]
        logits = model(ids[:, :-1]).logits.float()
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        for j, v in zip(idx, ((ce * mask).sum(1) / mask.sum(1).clamp_min(1)).tolist(), strict=True):
            out[j] = v
    return out


def pass_counts(model: nn.Module, tok: Any, prompts: Sequence[Prompt], cfg: JudgeConfig) -> list[int]:
    """Correct samples out of cfg.k per prompt (sampled at cfg.temperature with the stop token <|eot|>).

    All k x len(prompts) samples go through herd's continuous-batching engine at once: a finished answer frees
    its slot for the next one, so the pass costs the tokens actually generated (most answers stop at <|eot|>
    long before max_new_tokens), not len(batch) x the longest answer as static batches did."""
    ids = [encode_prompt(tok, p.messages) for p in prompts for _ in range(cfg.k)]
    # verifiable answers are one line; a base-model judge (the teacher) never says <|eot|> in the chat format and
    # went on with the next "Question:" to max_new_tokens: ending at the first newline too costs the tokens the
    # answer needs, and the continuation's integers can no longer be read as its answer
    stops = {EOT_ID, *newline_ids(tok)}
    outs = sample_engine(model, ids, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
                         stop=sorted(stops), seed=cfg.seed, logprobs=False, max_num_seqs=cfg.batch_size)
    counts: list[int] = []
    for j, p in enumerate(prompts):
        texts = [tok.decode([t for t in o.tokens if t not in stops], skip_special_tokens=True)
                 for o in outs[j * cfg.k:(j + 1) * cfg.k]]
        counts.append(sum(is_correct(p, t) >= 0.5 for t in texts))
    return counts


def judge_examples(model: nn.Module, tok: Any, examples: Sequence[Example], cfg: JudgeConfig) -> list[Judgment]:
    losses = reference_loss(model, tok, [e.messages for e in examples], batch_size=cfg.batch_size)
    verifiable = [i for i, e in enumerate(examples) if e.answer is not None]
    prompts = [Prompt(examples[i].example_id, examples[i].prompt, str(examples[i].answer),
                      examples[i].capability) for i in verifiable]
    counts = dict(zip(verifiable, pass_counts(model, tok, prompts, cfg), strict=True))
    return [Judgment(e.example_id, e.capability, counts.get(i), cfg.k, losses[i]) for i, e in enumerate(examples)]


def judge_prompts(model: nn.Module, tok: Any, prompts: Sequence[Prompt], cfg: JudgeConfig) -> list[Judgment]:
    """pass@k of RL prompts (the curriculum's starting difficulty); no reference loss (nan)."""
    return [Judgment(p.prompt_id, p.capability, c, cfg.k, float("nan"))
            for p, c in zip(prompts, pass_counts(model, tok, prompts, cfg), strict=True)]


def select_hard(judged: Sequence[Judgment], easy_fraction: float) -> set[str]:
    """Ids kept: per capability, all but the easiest `easy_fraction` (rounded down, at least one kept)."""
    keep: set[str] = set()
    by_cap: dict[str, list[Judgment]] = {}
    for j in judged:
        by_cap.setdefault(j.capability, []).append(j)
    for js in by_cap.values():
        js = sorted(js, key=lambda j: (j.easiness(), j.prompt_id), reverse=True)  # easiest first, stable
        drop = min(int(easy_fraction * len(js)), len(js) - 1)
        keep.update(j.prompt_id for j in js[drop:])
    return keep


__all__ = ["Judgment", "judge_examples", "judge_prompts", "pass_counts", "reference_loss", "select_hard"]
