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
from herd.eval.stats import Comparison, Score, bootstrap_mean, compare_binary, mcnemar, paired_bootstrap, pass_at_k, wilson


def compare(parent: SuiteResult, child: SuiteResult, *, confidence: float = 0.95, resamples: int = 1000,
            seed: int = 0) -> Comparison | None:
    """Paired comparison of ``child`` against ``parent`` on the items both scored (None when they share none).

    0/1 outcomes (accuracy suites): McNemar's exact test with a paired-bootstrap CI of the accuracy difference;
    per-item values (perplexity's per-sequence loss): a paired bootstrap."""
    a, b = parent.outcomes(), child.outcomes()
    ids = sorted(set(a) & set(b))
    if not ids:
        return None
    x, y = [a[i] for i in ids], [b[i] for i in ids]
    if child.outcome_key == "correct":
        return compare_binary(x, y, confidence=confidence, resamples=resamples, seed=seed)
    return paired_bootstrap(x, y, confidence=confidence, resamples=resamples, seed=seed)


__all__ = ["ArithmeticConfig", "Comparison", "EvaluateConfig", "HerdLM", "NeedleConfig", "Score", "SuiteResult",
           "bootstrap_mean", "build_evalset", "compare", "compare_binary", "evaluate_arithmetic", "evaluate_image",
           "evaluate_knowledge", "evaluate_model", "evaluate_multiple_choice", "evaluate_needle",
           "evaluate_perplexity", "heatmap", "mcnemar", "metric_key", "paired_bootstrap", "pass_at_k",
           "read_items", "read_results", "uses_chat", "wilson", "write_results"]
