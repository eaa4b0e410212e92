"""Decode speed and size on disk of herd's packed int8/int4 CPU runtime vs the dense model, side by side in one run.

    .venv/bin/python -m benchmarks.quantize_speed --model MODEL_DIR         # a trained checkpoint (or --random)
    .venv/bin/python -m benchmarks.quantize_speed --random --new-tokens 16  # quick, tiny-recipe teacher shape

Variants: fp32 dense, bf16 dense, int8 (W8A16 per channel, torch._weight_int8pack_mm) and int4 (W4A16 g32,
torch._weight_int4pack_mm_for_cpu), the last two loaded from their compressed-tensors export by
herd.quantize.load_quantized with bf16 activations. Decode tok/s = batch · (N - 1) new tokens / (time of
generating N tokens - time of generating 1), i.e. prefill excluded; herd.model.generate, greedy, eos disabled;
variants interleaved rep by rep so load from other processes hits all alike; medians of --reps.
Results go to docs/benchmarks.md ("## quantize").
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="checkpoint directory (default: --random)")
    ap.add_argument("--random", action="store_true", help="a random model of the tiny recipe's teacher shape")
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on an oversubscribed box)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from herd.model import Llama4, ModelConfig, load_hf, save_hf
    from herd.model.generate import SamplingParams, generate
    from herd.quantize import QuantScheme
    from herd.quantize.export import export_compressed
    from herd.quantize.modules import load_quantized
    from herd.quantize.targets import quantize_weights

    torch.manual_seed(0)
    if args.model:
        parent = load_hf(args.model, dtype=torch.float32)
    else:
        parent = Llama4(ModelConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=512, intermediate_size_mlp=1024,
                                    num_local_experts=4)).eval()
    V = parent.config.vocab_size
    models, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            d = save_hf(parent, Path(tmp) / name, dtype=dtype)
            sizes[name] = sum(f.stat().st_size for f in d.glob("*.safetensors"))
            models[name] = load_hf(d)
        for name, scheme in (("int8", QuantScheme(scheme="int8")), ("int4", QuantScheme(scheme="int4", group_size=32))):
            qw = quantize_weights(parent, scheme, scale_dtype=torch.bfloat16)
            d = export_compressed(parent, qw, scheme, Path(tmp) / name, dtype=torch.bfloat16)
            sizes[name] = sum(f.stat().st_size for f in d.glob("*.safetensors"))
            models[name] = load_quantized(d, dtype=torch.bfloat16)

    def run(model: torch.nn.Module, prompts: list[list[int]], n: int) -> float:
        p = SamplingParams(temperature=0.0, max_new_tokens=n, stop_tokens=[])
        t = time.perf_counter()
        out = generate(model, prompts, p)
        dt = time.perf_counter() - t
        assert all(len(g.tokens) == n for g in out)
        return dt

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{sum(p.numel() for p in parent.parameters()):,} params, {args.prompt}-token prompts, "
          f"{args.new_tokens} new tokens, median of {args.reps}", flush=True)
    rates: dict[tuple[str, int], float] = {}
    for B in (int(b) for b in args.batches.split(",")):
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(13, V, (B, args.prompt), generator=g).tolist()
        for m in models.values():  # warm-up (allocator, kernel dispatch)
            run(m, prompts, 2)
        times: dict[str, list[float]] = {k: [] for k in models}
        for _ in range(args.reps):
            for name, m in models.items():
                with torch.inference_mode():
                    t_n, t_1 = run(m, prompts, args.new_tokens), run(m, prompts, 1)
                times[name].append(B * (args.new_tokens - 1) / max(t_n - t_1, 1e-9))
        for name in models:
            rates[(name, B)] = statistics.median(times[name])
            print(f"batch {B:>2} {name}: {rates[(name, B)]:,.0f} tok/s", flush=True)
    batches = sorted({b for _, b in rates})
    print("\n| variant | " + " | ".join(f"decode tok/s batch {b} (x bf16)" for b in batches) + " | size on disk MB (x bf16) |")
    print("|---|" + "---|" * len(batches) + "---|")
    for name in models:
        cells = " | ".join(f"{rates[(name, b)]:,.0f} ({rates[(name, b)] / rates[('bf16', b)]:.2f})" for b in batches)
        print(f"| {name} | {cells} | {sizes[name] / 1e6:.2f} ({sizes[name] / sizes['bf16']:.2f}) |")
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
