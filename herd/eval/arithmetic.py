"""Arithmetic suite: held-out word problems, greedy pass@1 and sampled pass@k (unbiased estimator).

    r = evaluate_arithmetic(lm, read_items(evalset, "arithmetic"), cfg.arithmetic, sampled=True)
    r.metrics["pass_at_1"], r.metrics["sampled_pass_at_4"]

A completion is read up to its first blank/new line (base models go on with the next "Question:") and checked
with ``herd.data.synthetic.arithmetic.check_answer`` (its last integer equals the answer), the same check RL
rewards use. pass@k draws ``cfg.samples`` completions per problem at ``cfg.temperature`` on the first
``cfg.pass_k_items`` problems and averages the unbiased estimator 1 - C(n-c, k)/C(n, k) (bootstrap CI).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from herd.eval.config import ArithmeticConfig
from herd.eval.knowledge import first_line
from herd.eval.lm import EOT_IDS, HerdLM
from herd.eval.result import SuiteResult
from herd.eval.stats import bootstrap_mean, pass_at_k, wilson


def _correct(text: str, answer: str, chat: bool) -> tuple[str, int]:
    from herd.data.synthetic.arithmetic import check_answer

    pred = text.strip() if chat else first_line(text)
    return pred, int(check_answer(pred, answer))


def evaluate_arithmetic(lm: HerdLM, items: Sequence[dict[str, Any]], cfg: ArithmeticConfig, *,
                        chat: bool = False, sampled: bool = True, confidence: float = 0.95, seed: int = 0,
                        resamples: int = 1000) -> SuiteResult:
    t0 = time.perf_counter()
    prompts = lm.prompt_ids(items, chat)
    gens = lm.generate(prompts, max_new_tokens=cfg.max_new_tokens, stop_tokens=EOT_IDS if chat else lm.line_stops)
    samples, right = [], 0
    for it, g in zip(items, gens, strict=True):
        pred, ok = _correct(lm.decode(g), it["answer"], chat)
        right += ok
        samples.append({"id": it["id"], "question": it["question"], "answer": it["answer"], "prediction": pred,
                        "correct": ok})
    metrics = {"pass_at_1": wilson(right, len(items), confidence)}
    extra: dict[str, Any] = {"prompt": "chat" if chat else "completion", "greedy_items": len(items)}
    if sampled:
        sub = list(range(min(cfg.pass_k_items, len(items))))
        reps = [prompts[i] for i in sub for _ in range(cfg.samples)]
        outs = lm.generate(reps, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, seed=seed,
                           stop_tokens=EOT_IDS if chat else lm.line_stops)
        per_k: dict[int, list[float]] = {k: [] for k in cfg.pass_k}
        for j, i in enumerate(sub):
            c = sum(_correct(lm.decode(o), items[i]["answer"], chat)[1]
                    for o in outs[j * cfg.samples:(j + 1) * cfg.samples])
            samples[i]["sampled_correct"] = c
            for k in cfg.pass_k:
                per_k[k].append(pass_at_k(cfg.samples, c, k))
        for k, vals in per_k.items():
            metrics[f"sampled_pass_at_{k}"] = bootstrap_mean(vals, confidence=confidence, resamples=resamples,
                                                             seed=seed)
        extra.update({"samples": cfg.samples, "temperature": cfg.temperature, "sampled_items": len(sub)})
    return SuiteResult("arithmetic", metrics, primary="pass_at_1", samples=samples,
                       seconds=time.perf_counter() - t0, extra=extra)


__all__ = ["evaluate_arithmetic"]
