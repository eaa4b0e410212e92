"""herd.eval: evaluation suites with confidence intervals, paired comparisons, the eval set and the report.

Every suite is a plain function: a loaded model (``HerdLM``), its items, a config -> ``SuiteResult`` (scores
with intervals, per-item predictions). Nothing here touches MLflow or the flow runner, so the quantize gate,
post-training and notebooks call the same functions the evaluate flow does::

    from herd.eval import HerdLM, read_items, evaluate_arithmetic, evaluate_multiple_choice, compare
    lm = HerdLM.load(model_dir, batch_size=32)                       # checkpoint dir + its tokenizer
    arith = evaluate_arithmetic(lm, read_items(evalset, "arithmetic"), cfg.arithmetic, sampled=False)
    arith.metrics["pass_at_1"]                                        # Score(value, lo, hi, n): Wilson CI
    mc = evaluate_multiple_choice(lm, read_items(evalset, "multiple_choice"))
    mc.metrics["acc"], mc.extra["chance"]                             # raw and acc_norm; chance 0.25
    compare(parent_result, child_result)                              # paired on the same items: McNemar /
                                                                      # paired bootstrap -> Comparison(delta, lo, hi, p)

Suites (one module each): ``perplexity`` (token-weighted held-out loss), ``knowledge`` (closed-book QA, exact
match), ``arithmetic`` (greedy pass@1, sampled pass@k), ``multiple_choice`` (log-likelihood of 4 options),
``needle`` (length x depth grid, heatmap), ``image`` (digit QA through the vision tower; skipped without one).
``evaluate_model`` runs the configured suites on one model. The eval set (``build_evalset``) holds every item
with its prompt text, so herd and lm-eval (``herd.eval.harness``, task YAMLs in ``herd/eval/tasks``) score
the same items. ``herd.eval.report`` builds the comparison table, markdown and chart across models.

Run it: ``herd flow evaluate`` (every model of the pipeline, by role), ``herd eval MODEL`` (any model reference:
digest, ``m-...`` id or checkpoint dir), ``herd eval show`` (the comparison table).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names resolve lazily (PEP 562), so the recipe (which imports herd.eval.config) never imports torch.
_EXPORTS = {
    "evaluate_arithmetic": "herd.eval.arithmetic", "ArithmeticConfig": "herd.eval.config",
    "EvaluateConfig": "herd.eval.config", "NeedleConfig": "herd.eval.config", "build_evalset": "herd.eval.evalset",
    "read_items": "herd.eval.evalset", "evaluate_image": "herd.eval.image", "evaluate_knowledge": "herd.eval.knowledge",
    "HerdLM": "herd.eval.lm", "evaluate_multiple_choice": "herd.eval.multiple_choice",
    "evaluate_needle": "herd.eval.needle", "heatmap": "herd.eval.needle", "evaluate_perplexity": "herd.eval.perplexity",
    "SuiteResult": "herd.eval.result", "metric_key": "herd.eval.result", "read_results": "herd.eval.result",
    "write_results": "herd.eval.result", "evaluate_model": "herd.eval.run", "uses_chat": "herd.eval.run",
    "Comparison": "herd.eval.stats", "Score": "herd.eval.stats", "bootstrap_mean": "herd.eval.stats",
    "compare_binary": "herd.eval.stats", "mcnemar": "herd.eval.stats", "paired_bootstrap": "herd.eval.stats",
    "pass_at_k": "herd.eval.stats", "wilson": "herd.eval.stats", "compare": "herd.eval.stats",
}

if TYPE_CHECKING:
    from herd.eval.arithmetic import evaluate_arithmetic
    from herd.eval.config import ArithmeticConfig, EvaluateConfig, NeedleConfig
    from herd.eval.evalset import build_evalset, read_items
    from herd.eval.image import evaluate_image
    from herd.eval.knowledge import evaluate_knowledge
    from herd.eval.lm import HerdLM
    from herd.eval.multiple_choice import evaluate_multiple_choice
    from herd.eval.needle import evaluate_needle, heatmap
    from herd.eval.perplexity import evaluate_perplexity
    from herd.eval.result import SuiteResult, metric_key, read_results, write_results
    from herd.eval.run import evaluate_model, uses_chat
    from herd.eval.stats import (
        Comparison,
        Score,
        bootstrap_mean,
        compare,
        compare_binary,
        mcnemar,
        paired_bootstrap,
        pass_at_k,
        wilson,
    )


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'herd.eval' has no attribute {name!r}")


__all__ = ["ArithmeticConfig", "Comparison", "EvaluateConfig", "HerdLM", "NeedleConfig", "Score",
           "SuiteResult", "bootstrap_mean", "build_evalset", "compare", "compare_binary",
           "evaluate_arithmetic", "evaluate_image", "evaluate_knowledge", "evaluate_model",
           "evaluate_multiple_choice", "evaluate_needle", "evaluate_perplexity", "heatmap", "mcnemar",
           "metric_key", "paired_bootstrap", "pass_at_k", "read_items", "read_results", "uses_chat", "wilson",
           "write_results"]
