"""What a suite returns: named scores with intervals, per-item predictions, timing, or a reason it was skipped.

    r = evaluate_arithmetic(lm, items, cfg.arithmetic)
    r.primary_score                     # Score(value, lo, hi, n)
    r.mlflow_metrics()                  # {"arithmetic/pass_at_1": 0.12, "arithmetic/pass_at_1_lo": ..., ...}
    r.outcomes()                        # {item id: 0/1}: what paired comparisons between models use
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.eval.stats import Score

_ILLEGAL = re.compile(r"[^A-Za-z0-9_\-./: ]")


def metric_key(*parts: str) -> str:
    """A legal MLflow metric name (alphanumerics, ``_ - . / :`` and spaces): ``acc,none`` -> ``acc_none``."""
    return "/".join(_ILLEGAL.sub("_", p) for p in parts if p)


@dataclass
class SuiteResult:
    suite: str
    metrics: dict[str, Score] = field(default_factory=dict)
    primary: str = ""
    samples: list[dict[str, Any]] = field(default_factory=list)  # per item: id, prediction, correct, ...
    outcome_key: str = "correct"  # per-sample field that paired comparisons use (0/1 or a value)
    seconds: float = 0.0
    skipped: str | None = None  # why the suite did not run (e.g. no vision tower)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. chance level, the NIAH grid

    @property
    def primary_score(self) -> Score | None:
        return self.metrics.get(self.primary)

    def outcomes(self) -> dict[str, float]:
        return {s["id"]: float(s[self.outcome_key]) for s in self.samples if self.outcome_key in s}

    def sampled_outcomes(self) -> dict[str, float]:
        """{item id: share of its sampled answers that were right} (arithmetic's sampled pass@1), or {}."""
        n = self.extra.get("samples")
        if not n:
            return {}
        return {s["id"]: s["sampled_correct"] / n for s in self.samples if "sampled_correct" in s}

    def mlflow_metrics(self, prefix: str = "") -> dict[str, float]:
        """``suite/metric`` -> value, plus ``_lo``, ``_hi`` (the CI) and ``_n``; legal MLflow names."""
        out: dict[str, float] = {}
        for name, s in self.metrics.items():
            key = metric_key(prefix, self.suite, name)
            out[key], out[f"{key}_lo"], out[f"{key}_hi"], out[f"{key}_n"] = s.value, s.lo, s.hi, float(s.n)
        if not self.skipped:
            out[metric_key(prefix, self.suite, "seconds")] = self.seconds
        return out

    def to_dict(self, with_samples: bool = False) -> dict[str, Any]:
        d: dict[str, Any] = {"suite": self.suite, "primary": self.primary, "seconds": self.seconds,
                             "skipped": self.skipped, "outcome_key": self.outcome_key, "extra": self.extra,
                             "metrics": {k: v.to_dict() for k, v in self.metrics.items()}}
        if with_samples:
            d["samples"] = self.samples
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SuiteResult:
        return cls(suite=d["suite"], primary=d.get("primary", ""), seconds=d.get("seconds", 0.0),
                   skipped=d.get("skipped"), outcome_key=d.get("outcome_key", "correct"), extra=d.get("extra", {}),
                   metrics={k: Score(**v) for k, v in d.get("metrics", {}).items()}, samples=d.get("samples", []))


def write_results(results: dict[str, SuiteResult], out_dir: str | Path, meta: dict[str, Any]) -> Path:
    """``results.json`` (scores, meta) and ``samples/<suite>.jsonl`` (per-item predictions) under ``out_dir``."""
    out = Path(out_dir)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    for name, r in results.items():
        with (out / "samples" / f"{name}.jsonl").open("w", encoding="utf-8") as f:
            for s in r.samples:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
    path = out / "results.json"
    path.write_text(json.dumps({"meta": meta, "suites": {k: r.to_dict() for k, r in results.items()}},
                               indent=2) + "\n")
    return path


def read_results(result_dir: str | Path, with_samples: bool = True) -> tuple[dict[str, Any], dict[str, SuiteResult]]:
    """(meta, suite results) from a directory written by ``write_results``."""
    root = Path(result_dir)
    data = json.loads((root / "results.json").read_text())
    out: dict[str, SuiteResult] = {}
    for name, d in data["suites"].items():
        r = SuiteResult.from_dict(d)
        p = root / "samples" / f"{name}.jsonl"
        if with_samples and p.exists():
            r.samples = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line]
        out[name] = r
    return data["meta"], out


__all__ = ["SuiteResult", "metric_key", "read_results", "write_results"]
