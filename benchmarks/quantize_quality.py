"""Quality of herd's quantized variants against their parent, side by side in one run: paired mini-eval retention
(1,000 items: 800 cloze + 200 arithmetic), KL and top-1 agreement on held-out tokens, GPTQ vs RTN, size on disk.

    .venv/bin/python -m benchmarks.quantize_quality --model MODEL_DIR --calib-data PACKED_TRAIN --val PACKED_VAL
    .venv/bin/python -m benchmarks.quantize_quality --model ... --calib-data ... --val ... --items 200   # quick
    (fp8 is checked by the tests, tests/quantize; it is not listed here to keep the run short.)

MODEL_DIR is a trained Llama 4 checkpoint with its tokenizer (the pipeline's `distill.train.model` or
`pretrain.train.model` artifact); PACKED_TRAIN the data flow's `data.pack.pretrain` (the first 64 rows calibrate
GPTQ, 256 tokens each) and PACKED_VAL its `data.pack.pretrain_val` (every row held out: KL, top-1, items). Every variant is measured as served: a
compressed-tensors export loaded by herd.quantize.load_quantized (packed kernels, bf16 activations), against the
parent in bf16. The items are the gate's (herd.quantize.gate): cloze multiple choice on held-out text and
arithmetic word problems, the same items for every model, so retention is a paired ratio (bootstrap 95 % CI).
Results go to docs/benchmarks.md ("## quantize").
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib-data", required=True)
    ap.add_argument("--val", required=True)
    ap.add_argument("--items", type=int, default=800, help="cloze items (+ items/4 arithmetic problems)")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from herd.data.tokenizer import load_tokenizer
    from herd.model.hf import load_hf
    from herd.quantize import QuantScheme
    from herd.quantize.export import export_compressed
    from herd.quantize.gate import (
        cloze_items,
        logit_agreement,
        paired_retention,
        score_arithmetic,
        score_cloze,
    )
    from herd.quantize.gptq import collect_hessians
    from herd.quantize.modules import load_quantized
    from herd.quantize.run import read_rows
    from herd.quantize.targets import quantize_weights, target_names

    torch.manual_seed(args.seed)
    parent = load_hf(args.model, dtype=torch.float32)
    tok = load_tokenizer(args.model)
    calib = read_rows(args.calib_data, args.calib)[:, :256]
    heldout = read_rows(args.val, 100_000)
    print(f"parent {args.model}: {sum(p.numel() for p in parent.parameters()):,} params; calibration "
          f"{calib.numel():,} tokens, held-out {heldout.numel():,} tokens in {len(heldout)} rows", flush=True)
    t = time.perf_counter()
    hessians = collect_hessians(parent, [calib[i : i + 8] for i in range(0, len(calib), 8)],
                                target_names(parent))
    print(f"Hessians: {time.perf_counter() - t:.1f}s", flush=True)
    ref = copy.deepcopy(parent).to(torch.bfloat16)

    items = cloze_items(heldout, args.items, args.seed)
    n_arith = args.items // 4
    t = time.perf_counter()
    parent_scores = score_cloze(ref, items) + score_arithmetic(ref, tok, n_arith, args.seed)
    print(f"parent mini-eval: {time.perf_counter() - t:.1f}s", flush=True)
    variants = {
        "int8 RTN": QuantScheme(scheme="int8"),
        "int4 RTN g32": QuantScheme(scheme="int4", group_size=32),
        "int4 GPTQ g32": QuantScheme(scheme="int4", method="gptq", group_size=32),
        "int4 RTN g128": QuantScheme(scheme="int4", group_size=128),
        "int4 GPTQ g128": QuantScheme(scheme="int4", method="gptq", group_size=128),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        from herd.model.hf import save_hf

        bf16_dir = save_hf(parent, Path(tmp) / "bf16", dtype=torch.bfloat16)
        parent_size = sum(f.stat().st_size for f in bf16_dir.glob("*.safetensors"))
        for name, scheme in variants.items():
            t = time.perf_counter()
            if scheme.group_size and any(w.shape[1] % scheme.group_size for w in
                                         (parent.get_submodule(n).weight for n in target_names(parent)
                                          if ".experts." not in n)):
                print(f"{name}: skipped (a layer width is not a multiple of {scheme.group_size})")
                continue
            qw = quantize_weights(parent, scheme, hessians if scheme.method == "gptq" else None,
                                  scale_dtype=torch.bfloat16)
            err = [q.error for q in quantize_weights(parent, scheme, hessians).values() if q.error is not None]
            out = export_compressed(parent, qw, scheme, Path(tmp) / name.replace(" ", "_"), dtype=torch.bfloat16)
            variant = load_quantized(out, dtype=torch.bfloat16)
            agree = logit_agreement(ref, variant, heldout)
            scores = score_cloze(variant, items) + score_arithmetic(variant, tok, n_arith, args.seed)
            r = paired_retention(parent_scores, scores, args.seed)
            mc = paired_retention(parent_scores[: len(items)], scores[: len(items)], args.seed)
            ar = paired_retention(parent_scores[len(items) :], scores[len(items) :], args.seed)
            size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
            results[name] = {**agree, **r, "mc_parent": mc["parent_score"], "mc_variant": mc["variant_score"],
                             "arith_parent": ar["parent_score"], "arith_variant": ar["variant_score"],
                             "layer_error": sum(err) / len(err) if err else float("nan"), "size_bytes": size,
                             "seconds": time.perf_counter() - t}
            print(f"{name}: retention {r['retention']:.4f} [{r['retention_lo']:.4f}, {r['retention_hi']:.4f}] "
                  f"KL {agree['kl']:.2e} top1 {agree['top1']:.4f} ({time.perf_counter() - t:.1f}s)", flush=True)

    print(f"\nparent (bf16): score {sum(parent_scores) / len(parent_scores):.4f} on {len(parent_scores)} items "
          f"({len(items)} cloze MC + {n_arith} arithmetic), seed {args.seed}; size {parent_size / 1e6:.2f} MB\n")
    print("| variant | retention (95% CI) | MC parent -> variant | arith parent -> variant | KL nats/token | "
          "top-1 agree | layer error (GPTQ metric) | size MB (x of bf16) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['retention']:.4f} ({r['retention_lo']:.3f}-{r['retention_hi']:.3f}) | "
              f"{r['mc_parent']:.3f} -> {r['mc_variant']:.3f} | {r['arith_parent']:.3f} -> {r['arith_variant']:.3f} | "
              f"{r['kl']:.2e} | {r['top1']:.4f} | {r['layer_error']:.3g} | "
              f"{r['size_bytes'] / 1e6:.2f} ({r['size_bytes'] / parent_size:.2f}) |")
    if args.json:
        Path(args.json).write_text(json.dumps({"parent_size": parent_size, "results": results}, indent=1))


if __name__ == "__main__":
    main()
