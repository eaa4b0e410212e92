"""Evaluate one model on the eval set: every configured suite, in this process, one after another.

    lm = HerdLM.load(model_dir, batch_size=cfg.batch_size)
    results = evaluate_model(lm, evalset_dir, cfg, val_dir=val, seq_len=256, chat=False, heavy=True)
    write_results(results, out_dir, meta={...})

One process per model: on 2 cores, a Ray task per suite would only add start-up and a second copy of the
model. ``heavy`` turns on NIAH and sampled pass@k (the tiny recipe runs them on the final model and its parent
only). A suite that cannot run on this model (image QA without a vision tower) is returned skipped, with why.
"""

from __future__ import annotations

import logging
from pathlib import Path

from herd.eval.arithmetic import evaluate_arithmetic
from herd.eval.config import EvaluateConfig
from herd.eval.evalset import read_items
from herd.eval.image import evaluate_image
from herd.eval.knowledge import evaluate_knowledge
from herd.eval.lm import HerdLM
from herd.eval.multiple_choice import evaluate_multiple_choice
from herd.eval.needle import evaluate_needle
from herd.eval.perplexity import evaluate_perplexity
from herd.eval.result import SuiteResult

log = logging.getLogger(__name__)
CHAT_ROLES = ("sft", "rl", "dpo", "int8", "int4", "fp8")  # quantize takes the post-trained (chat) weights


def uses_chat(role: str) -> bool:
    """Whether a model of ``role`` is prompted through the chat template (else the completion format)."""
    return role in CHAT_ROLES


def evaluate_model(lm: HerdLM, evalset_dir: str | Path, cfg: EvaluateConfig, *, val_dir: str | Path | None,
                   chat: bool = False, heavy: bool = True, sampled: bool | None = None,
                   on_suite=None) -> dict[str, SuiteResult]:
    """Run ``cfg.suites`` on ``lm``; ``on_suite(name, result)`` is called after each (progress, logging).
    ``heavy`` turns on NIAH and sampled pass@k; ``sampled`` (default: ``heavy``) sets pass@k on its own."""
    sampled = heavy if sampled is None else sampled
    out: dict[str, SuiteResult] = {}
    conf, seed = cfg.confidence, cfg.seed
    for suite in cfg.suites:
        if suite == "perplexity":
            if val_dir is None:
                r = SuiteResult("perplexity", skipped="no packed validation dataset was given")
            else:
                r = evaluate_perplexity(lm, val_dir, rows=cfg.perplexity_rows, confidence=conf,
                                        resamples=cfg.bootstrap, seed=seed)
        elif suite == "knowledge":
            r = evaluate_knowledge(lm, read_items(evalset_dir, "knowledge"), chat=chat,
                                   max_new_tokens=cfg.max_new_tokens, confidence=conf)
        elif suite == "multiple_choice":
            r = evaluate_multiple_choice(lm, read_items(evalset_dir, "multiple_choice"), chat=chat, confidence=conf)
        elif suite == "arithmetic":
            r = evaluate_arithmetic(lm, read_items(evalset_dir, "arithmetic"), cfg.arithmetic, chat=chat,
                                    sampled=sampled, confidence=conf, seed=seed, resamples=cfg.bootstrap)
        elif suite == "needle":
            if not heavy:
                r = SuiteResult("needle", skipped="NIAH runs on the final model and its parent only "
                                "(evaluate.full_suites_on: final)")
            else:
                r = evaluate_needle(lm, read_items(evalset_dir, "needle"), max_new_tokens=cfg.needle.max_new_tokens,
                                    confidence=conf)
        elif suite == "image":
            r = evaluate_image(lm, read_items(evalset_dir, "image"), confidence=conf)
        else:  # EvaluateConfig's Literal makes this unreachable from a recipe
            raise ValueError(f"unknown suite {suite!r}")
        out[suite] = r
        if on_suite is not None:
            on_suite(suite, r)
    return out


__all__ = ["CHAT_ROLES", "evaluate_model", "uses_chat"]
