"""herd's suites through lm-evaluation-harness: the task YAMLs shipped in ``herd/eval/tasks``, on the eval set.

    r = run_harness(evalset_dir, backend="local-completions", base_url="http://127.0.0.1:8000/v1/completions",
                    model_name="herd", tasks=["herd_mc", "herd_arith"])
    r.metrics        # {"harness/herd_mc/acc": 0.41, "harness/herd_mc/acc_stderr": 0.05, ...}: legal MLflow names
    r = run_harness(evalset_dir, backend="hf", pretrained=model_dir, tasks=["herd_mc"])   # transformers in-process

The tasks read the eval set's jsonl (``custom_dataset`` with ``metadata={"evalset": DIR}``) and download
nothing, so lm-eval scores exactly the items and prompts herd's suites score. ``local-completions`` talks to any
OpenAI-compatible ``/v1/completions`` endpoint (herd's own, or vLLM); ``hf`` runs transformers on the checkpoint
directory (transformers loads herd checkpoints), which is how herd's multiple-choice accuracy is cross-checked
against lm-eval's without a server. lm-eval is optional: ``pip install 'herd-platform[eval]'``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herd.eval.result import metric_key

TASKS_DIR = Path(__file__).parent / "tasks"
HERD_TASKS = ("herd_mc", "herd_arith", "herd_knowledge", "herd_niah")


@dataclass
class HarnessResult:
    metrics: dict[str, float]  # harness/<task>/<metric>: legal MLflow names
    results: dict[str, Any]  # lm-eval's own results dict
    samples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # per task, when logged


def mlflow_names(results: dict[str, dict[str, Any]], prefix: str = "harness") -> dict[str, float]:
    """lm-eval's ``{"herd_mc": {"acc,none": 0.4, "acc_stderr,none": 0.05, "alias": ...}}`` as legal MLflow metric
    names (commas are illegal): ``harness/herd_mc/acc``; a filter other than ``none`` stays as a suffix."""
    out: dict[str, float] = {}
    for task, metrics in results.items():
        for key, value in metrics.items():
            if not isinstance(value, int | float) or isinstance(value, bool):
                continue
            name, _, flt = key.partition(",")
            out[metric_key(prefix, task, name if flt in ("", "none") else f"{name}_{flt}")] = float(value)
    return out


def _lm_eval() -> Any:
    try:
        import lm_eval
    except ImportError as e:
        raise ImportError("lm-eval is not installed: pip install 'herd-platform[eval]' (or the dev extra)") from e
    return lm_eval


def run_harness(evalset_dir: str | Path, *, backend: str = "local-completions", base_url: str | None = None,
                model_name: str = "herd", pretrained: str | Path | None = None, tokenizer: str | Path | None = None,
                tasks: Sequence[str] = ("herd_mc",), limit: int | None = None, batch_size: int = 8,
                api_key: str | None = None, log_samples: bool = True) -> HarnessResult:
    """Run lm-eval ``tasks`` (herd's by name, or any lm-eval task) on the eval set in ``evalset_dir``."""
    lm_eval = _lm_eval()
    from lm_eval.tasks import TaskManager

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # herd's tasks never download; nothing else should either
    if backend == "local-completions":
        if not base_url:
            raise ValueError("backend local-completions needs base_url (the endpoint, e.g. "
                             "http://127.0.0.1:8000/v1/completions)")
        url = base_url.rstrip("/")
        url = url if url.endswith("/completions") else f"{url}/completions" if url.endswith("/v1") \
            else f"{url}/v1/completions"
        # token ids, not strings: the server scores exactly the ids whose context length lm-eval counted
        # (serve-eval-notes §4.2); herd's server and vLLM both take token-id prompts
        args: dict[str, Any] = {"model": model_name, "base_url": url, "num_concurrent": 1, "max_retries": 3,
                                "tokenized_requests": True}
        if tokenizer is not None:  # a local tokenizer instead of the server's /tokenize routes
            args.update(tokenizer_backend="huggingface", tokenizer=str(tokenizer))
        if api_key:
            os.environ["OPENAI_API_KEY"] = api_key  # lm-eval reads the key from the environment, never logged
    elif backend == "hf":
        if pretrained is None:
            raise ValueError("backend hf needs pretrained=<checkpoint dir>")
        args = {"pretrained": str(pretrained), "dtype": "float32", "device": "cpu"}
    else:
        raise ValueError(f"unknown lm-eval backend {backend!r}; use local-completions or hf")
    manager = TaskManager(include_path=str(TASKS_DIR), metadata={"evalset": str(Path(evalset_dir).resolve())})
    out = lm_eval.simple_evaluate(model=backend, model_args=args, tasks=list(tasks), task_manager=manager,
                                  limit=limit, batch_size=batch_size, log_samples=log_samples)
    results = out.get("results", {}) if out else {}
    return HarnessResult(mlflow_names(results), results, dict(out.get("samples", {})) if out else {})


__all__ = ["HERD_TASKS", "TASKS_DIR", "HarnessResult", "mlflow_names", "run_harness"]
