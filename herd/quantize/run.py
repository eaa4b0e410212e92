"""One quantized variant end to end, as the quantize flow runs it: calibrate, quantize, export, gate.

    report = quantize_checkpoint("parent/", scheme, cfg, calib_uri, val_uri, "out/int4",
                                 evalset="evalset/", chat=True)                 # raises QualityGateError

The parent is a Hugging Face Llama 4 directory (with its tokenizer beside the weights). ``calib_uri`` is packed
training data: its first ``calibration.samples`` rows calibrate GPTQ. ``val_uri`` is the packed validation split:
its first ``calibration.heldout_samples`` rows are the gate's held-out tokens (never trained or calibrated on).
``evalset`` is the pipeline's eval set (herd.eval): the first ``cfg.eval_items`` arithmetic and multiple-choice
items are the paired mini-evaluation, prompted as chat when ``chat`` (a post-trained parent), scored by herd.eval
(``arithmetic``: the recipe's ``evaluate.arithmetic``). The variant is gated as it will be served: loaded by
``load_quantized`` on packed kernels with ``cfg.dtype`` activations, against the parent in the same dtype.
``quantize.json`` in the output holds the metrics, thresholds and what was checked.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from herd.quantize.config import QuantizeConfig, QuantScheme


def read_rows(val_uri: str, n: int, storage_options: dict[str, Any] | None = None) -> torch.Tensor:
    """The first ``n`` text rows (N, seq_len + 1) of packed shards, in a fixed order (rows holding image
    tokens are skipped: the gate compares text logits)."""
    from herd.data.reader import ShardReader

    reader = ShardReader(val_uri, batch_size=min(n, 64), shuffle=False, loop=False,
                         storage_options=storage_options)
    rows: list[torch.Tensor] = []
    for batch in reader:
        ids = batch["input_ids"]
        if "n_tiles" in batch:
            ids = ids[batch["n_tiles"] == 0]
        rows.extend(ids)
        if len(rows) >= n:
            break
    if len(rows) < 4:
        raise ValueError(f"{val_uri} holds {len(rows)} text rows; the quantize step needs at least 4 (calibration "
                         "and held-out): pack more validation data")
    return torch.stack(rows[:n])


def quantize_checkpoint(parent_dir: str | Path, scheme: QuantScheme, cfg: QuantizeConfig, calib_uri: str,
                        val_uri: str, out_dir: str | Path, *, evalset: str | Path | None = None, chat: bool = False,
                        arithmetic: Any | None = None, storage_options: dict[str, Any] | None = None,
                        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Quantize the checkpoint at ``parent_dir`` by ``scheme`` into ``out_dir`` and gate it (see module doc)."""
    from herd.data.tokenizer import load_tokenizer
    from herd.model.hf import load_hf
    from herd.quantize.export import export_compressed
    from herd.quantize.gate import check_gate, logit_agreement, paired_mini_eval
    from herd.quantize.gptq import collect_hessians
    from herd.quantize.modules import load_quantized
    from herd.quantize.targets import quantize_weights, target_names

    t0 = time.perf_counter()
    dtype = getattr(torch, cfg.dtype)
    cal = cfg.calibration
    parent = load_hf(parent_dir, dtype=torch.float32)
    calib = read_rows(calib_uri, cal.samples, storage_options)[:, : cal.seq_len]
    heldout = read_rows(val_uri, cal.heldout_samples, storage_options)
    timings: dict[str, float] = {"load_s": time.perf_counter() - t0}

    hessians = None
    if scheme.method == "gptq":
        t = time.perf_counter()
        batches = [calib[i : i + 8] for i in range(0, len(calib), 8)]
        hessians = collect_hessians(parent, batches, target_names(parent, cfg.ignore))
        timings["calibrate_s"] = time.perf_counter() - t
        log(f"{scheme.scheme}: Hessians of {len(hessians)} layers from {calib.numel():,} calibration tokens")
    t = time.perf_counter()
    qweights = quantize_weights(parent, scheme, hessians, ignore=cfg.ignore, scale_dtype=dtype)
    timings["quantize_s"] = time.perf_counter() - t
    tokenizer_dir = Path(parent_dir) if (Path(parent_dir) / "tokenizer.json").exists() else None
    t = time.perf_counter()
    out = export_compressed(parent, qweights, scheme, out_dir, tokenizer=tokenizer_dir, dtype=dtype)
    timings["export_s"] = time.perf_counter() - t

    t = time.perf_counter()
    variant = load_quantized(out, dtype=dtype)
    # the reference is the parent as it would be served (same activation dtype), so the gate measures the
    # quantization and not bf16 arithmetic
    parent = parent.to(dtype)
    tokenizer = load_tokenizer(tokenizer_dir) if tokenizer_dir is not None else None
    metrics: dict[str, Any] = dict(logit_agreement(parent, variant, heldout))
    timings["agreement_s"] = time.perf_counter() - t
    if cfg.eval_items and evalset is not None and tokenizer is not None:
        from herd.eval import HerdLM

        t = time.perf_counter()
        metrics.update(paired_mini_eval(HerdLM(parent, tokenizer, batch_size=64),
                                        HerdLM(variant, tokenizer, batch_size=64), evalset, cfg.eval_items,
                                        chat=chat, arithmetic=arithmetic))
        timings["mini_eval_s"] = time.perf_counter() - t
    elif cfg.eval_items:
        why = "no eval set given" if evalset is None else "no tokenizer beside the parent"
        log(f"{scheme.scheme}: no paired mini-eval ({why}); KL and top-1 gate alone")
    errors = [qw.error for qw in qweights.values() if qw.error is not None]
    if errors:
        metrics["layer_error_mean"] = sum(errors) / len(errors)
    size = sum(f.stat().st_size for f in Path(out).glob("*.safetensors"))
    thresholds = scheme.gate.resolved(scheme.scheme)
    report = {"scheme": scheme.model_dump(mode="json"), "metrics": metrics, "thresholds": thresholds,
              "layers_quantized": len(qweights), "calibration": {"rows": len(calib), "tokens": int(calib.numel()),
              "heldout_rows": len(heldout), "heldout_tokens": int(heldout.numel()), "source": calib_uri,
              "heldout_source": val_uri, "evalset": Path(evalset).name if evalset is not None else None,
              "prompt": "chat" if chat else "completion"},
              "size_bytes": size, "timings": {**timings, "total_s": time.perf_counter() - t0}}
    passed_ok = False
    try:
        report["passed"] = check_gate(scheme.scheme, metrics, thresholds, scheme)
        passed_ok = True
    finally:
        report["gate"] = "passed" if passed_ok else "failed"
        (Path(out) / "quantize.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    return report


__all__ = ["quantize_checkpoint", "read_rows"]
