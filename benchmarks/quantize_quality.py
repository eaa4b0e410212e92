"""Quality of herd's quantized variants against their parent, side by side in one run: paired retention on the
pipeline's eval set (herd.eval's suites and items: 1,000 arithmetic + knowledge multiple choice + knowledge QA),
KL and top-1 agreement on held-out tokens, GPTQ vs RTN at group 32 and 128, fp8 (simulated on CPU), size on disk.

    .venv/bin/python -m benchmarks.quantize_quality --model MODEL_DIR --calib-data PACKED_TRAIN --val PACKED_VAL \\
        --evalset EVALSET_DIR                                     # the tiny pipeline's final model: ~10 min
    ... --variants "int8 RTN,int4 GPTQ g32" --items 100           # quick

MODEL_DIR is a trained checkpoint with its tokenizer (the pipeline's final model, ``dpo.train.model``);
PACKED_TRAIN the data flow's ``data.pack.pretrain`` (the first 64 rows calibrate GPTQ, 256 tokens each, as the
quantize step does); PACKED_VAL its ``data.pack.pretrain_val`` (every row held out: KL, top-1, cloze items);
EVALSET_DIR the evaluate flow's ``evaluate.evalset.evalset``. Every variant is measured as served: a
compressed-tensors export loaded by herd.quantize.load_quantized (packed int8/int4 kernels, fp8 through
torch._scaled_mm's CPU kernel, bf16 activations), against the parent in bf16. The suites are herd.eval's own
(``herd.quantize.gate.suite_outcomes``: greedy arithmetic pass@1, multiple-choice acc, QA exact match; chat
prompts for a post-trained model), every model on the same items, so retention (variant / parent score) is a
paired ratio with a paired-bootstrap 95 % CI (seed 0, 2,000 resamples). Pooled = all items of the three suites,
each item weighing the same. Cloze (which of 4 spans continues held-out text; ``--cloze`` items) is reported
beside them: it needs no instruction following, so a weak model is far from chance on it.
Results go to docs/benchmarks.md ("## quantize").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

SUITES = ("arithmetic", "multiple_choice", "knowledge")


def variants() -> dict:
    from herd.quantize import QuantScheme

    return {
        "int8 RTN": QuantScheme(scheme="int8"),
        "fp8 RTN (simulated)": QuantScheme(scheme="fp8"),
        "int4 RTN g32": QuantScheme(scheme="int4", group_size=32),
        "int4 GPTQ g32": QuantScheme(scheme="int4", method="gptq", group_size=32),
        "int4 RTN g128": QuantScheme(scheme="int4", group_size=128),
        "int4 GPTQ g128": QuantScheme(scheme="int4", method="gptq", group_size=128),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib-data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--evalset", required=True)
    ap.add_argument("--prompt", choices=["chat", "completion"], default="chat",
                    help="chat for a post-trained model (sft/rl/dpo), completion for teacher/student")
    ap.add_argument("--items", type=int, default=None, help="items per suite (default: all)")
    ap.add_argument("--cloze", type=int, default=800, help="cloze items on held-out text (0: none)")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--variants", default=None, help="comma-separated subset of: " + ", ".join(variants()))
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from herd.data.tokenizer import load_tokenizer
    from herd.eval import HerdLM, wilson
    from herd.model.hf import load_hf, save_hf
    from herd.quantize.export import export_compressed
    from herd.quantize.gate import (
        cloze_items,
        logit_agreement,
        paired_report,
        paired_retention,
        score_cloze,
        suite_outcomes,
    )
    from herd.quantize.gptq import collect_hessians
    from herd.quantize.modules import load_quantized
    from herd.quantize.run import read_rows
    from herd.quantize.targets import quantize_weights, target_names

    chosen = variants()
    if args.variants:
        names = [v.strip() for v in args.variants.split(",")]
        unknown = [n for n in names if n not in chosen]
        if unknown:
            ap.error(f"unknown variants {unknown}; choose from {list(chosen)}")
        chosen = {n: chosen[n] for n in names}
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    torch.manual_seed(args.seed)
    parent = load_hf(args.model, dtype=torch.float32)
    tok = load_tokenizer(args.model)
    calib = read_rows(args.calib_data, args.calib)[:, :256]
    heldout = read_rows(args.val, 100_000)
    chat = args.prompt == "chat"
    print(f"parent {args.model}: {sum(p.numel() for p in parent.parameters()):,} params; calibration "
          f"{calib.numel():,} tokens, held-out {heldout.numel():,} tokens in {len(heldout)} rows; "
          f"{torch.get_num_threads()} threads, load average {load0:.1f}", flush=True)
    hessians = None
    if any(s.method == "gptq" for s in chosen.values()):
        t = time.perf_counter()
        hessians = collect_hessians(parent, [calib[i : i + 8] for i in range(0, len(calib), 8)],
                                    target_names(parent))
        print(f"Hessians: {time.perf_counter() - t:.1f}s", flush=True)
    ref = copy.deepcopy(parent).to(torch.bfloat16)

    def outcomes(model: torch.nn.Module) -> dict[str, list[float]]:
        lm = HerdLM(model, tok, batch_size=64)
        return suite_outcomes(lm, args.evalset, suites=SUITES, n_items=args.items, chat=chat)

    t = time.perf_counter()
    items = cloze_items(heldout, args.cloze, args.seed) if args.cloze else []
    parent_out = outcomes(ref)
    parent_cloze = score_cloze(ref, items) if items else []
    print(f"parent eval: {time.perf_counter() - t:.1f}s; " + ", ".join(
        f"{s} {wilson(sum(v), len(v))}" for s, v in parent_out.items()), flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        bf16_dir = save_hf(parent, Path(tmp) / "bf16", dtype=torch.bfloat16)
        parent_size = sum(f.stat().st_size for f in bf16_dir.glob("*.safetensors"))
        for name, scheme in chosen.items():
            t = time.perf_counter()
            qw = quantize_weights(parent, scheme, hessians if scheme.method == "gptq" else None,
                                  scale_dtype=torch.bfloat16)
            # the layer reconstruction error GPTQ minimises, ||(W - W_hat) X||^2 per row, on the calibration Hessian
            err = [q.error for q in quantize_weights(parent, scheme, hessians).values() if q.error is not None] \
                if hessians is not None else []
            out = export_compressed(parent, qw, scheme, Path(tmp) / name.split(" (")[0].replace(" ", "_"),
                                    dtype=torch.bfloat16)
            variant = load_quantized(out, dtype=torch.bfloat16)
            agree = logit_agreement(ref, variant, heldout)
            r = paired_report(parent_out, outcomes(variant), args.seed)
            if items:
                c = paired_retention(parent_cloze, score_cloze(variant, items), args.seed)
                r.update({f"cloze/{k}": v for k, v in c.items()})
            size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            results[name] = {**agree, **r, "layer_error": sum(err) / len(err) if err else float("nan"),
                             "size_bytes": size, "seconds": time.perf_counter() - t}
            print(f"{name}: pooled retention {r['retention']:.4f} [{r['retention_lo']:.4f}, {r['retention_hi']:.4f}] "
                  f"KL {agree['kl']:.2e} top1 {agree['top1']:.4f} ({time.perf_counter() - t:.1f}s)", flush=True)

    n = {s: len(v) for s, v in parent_out.items()}
    pooled = sum(sum(v) for v in parent_out.values()) / sum(n.values())
    print(f"\nparent (bf16, {args.prompt} prompts): pooled {pooled:.4f} on {sum(n.values())} items ("
          + ", ".join(f"{s} {wilson(sum(v), len(v))}" for s, v in parent_out.items())
          + (f"; cloze {sum(parent_cloze) / len(parent_cloze):.3f} on {len(items)}" if items else "")
          + f"); size {parent_size / 1e6:.2f} MB; seed {args.seed}")
    print(f"{time.perf_counter() - t_start:.0f}s in all; load average {load0:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| variant | pooled retention (95% CI) | arith parent -> variant | MC parent -> variant | QA parent -> variant "
          "| cloze retention (95% CI) | KL nats/token | top-1 agree | layer error | size MB (x bf16) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        cloze = (f"{r['cloze/retention']:.4f} ({r['cloze/retention_lo']:.3f}-{r['cloze/retention_hi']:.3f})"
                 if items else "-")
        print(f"| {name} | {r['retention']:.4f} ({r['retention_lo']:.3f}-{r['retention_hi']:.3f}) | "
              + " | ".join(f"{r[f'{s}/parent_score']:.3f} -> {r[f'{s}/variant_score']:.3f}" for s in ("arith", "mc", "qa"))
              + f" | {cloze} | {r['kl']:.2e} | {r['top1']:.4f} | {r['layer_error']:.3g} | "
              f"{r['size_bytes'] / 1e6:.2f} ({r['size_bytes'] / parent_size:.2f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"parent_size": parent_size, "items": n, "parent_pooled": pooled,
                                               "results": results}, indent=1))


if __name__ == "__main__":
    main()
