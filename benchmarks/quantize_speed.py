"""Decode speed and size on disk of herd's serving engine on packed int8/int4 vs dense fp32/bf16, side by side in one run.

    .venv/bin/python -m benchmarks.quantize_speed --random --threads 2          # tiny-recipe teacher shape (~3 min)
    .venv/bin/python -m benchmarks.quantize_speed --model MODEL_DIR --threads 2 # a trained checkpoint

Variants: fp32 dense, bf16 dense, int8 (W8A16 per channel, torch._weight_int8pack_mm) and int4 (W4A16 g32,
torch._weight_int4pack_mm_for_cpu), the last two loaded from their compressed-tensors export by
herd.quantize.load_quantized with bf16 activations, i.e. exactly what herd serves on CPU. Every variant runs in
herd's continuous-batching engine (``herd.serve.engine.Engine.generate_batch``; max_num_seqs = batch, the whole
prefill in one step). Decode tok/s = batch · (N - 1) / (time to generate N tokens - time to generate 1), i.e.
prefill excluded; greedy, EOS ignored; variants interleaved rep by rep so load from other processes hits all alike;
medians of --reps. Results go to docs/benchmarks.md ("## quantize").
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
    from herd.quantize import QuantScheme
    from herd.quantize.export import export_compressed
    from herd.quantize.modules import load_quantized
    from herd.quantize.targets import quantize_weights
    from herd.serve.engine import Engine, EngineConfig, SamplingParams

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

    batches = [int(b) for b in args.batches.split(",")]
    cfg = EngineConfig(max_num_seqs=max(batches), max_model_len=args.prompt + args.new_tokens + 1,
                       max_num_batched_tokens=max(512, max(batches) * args.prompt))
    engines = {name: Engine(m, None, cfg) for name, m in models.items()}

    def run(engine: Engine, prompts: list[list[int]], n: int) -> float:
        p = SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)
        t = time.perf_counter()
        out = engine.generate_batch(prompts, p)
        dt = time.perf_counter() - t
        assert all(len(o.token_ids) == n for o in out)
        return dt

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"{sum(p.numel() for p in parent.parameters()):,} params, {args.prompt}-token prompts, "
          f"{args.new_tokens} new tokens, herd.serve.engine, median of {args.reps}", flush=True)
    rates: dict[tuple[str, int], float] = {}
    for B in batches:
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(13, V, (B, args.prompt), generator=g).tolist()
        for e in engines.values():  # warm-up (allocator, kernel dispatch)
            run(e, prompts, 2)
        times: dict[str, list[float]] = {k: [] for k in engines}
        for _ in range(args.reps):
            for name, e in engines.items():
                with torch.inference_mode():
                    t_n, t_1 = run(e, prompts, args.new_tokens), run(e, prompts, 1)
                times[name].append(B * (args.new_tokens - 1) / max(t_n - t_1, 1e-9))
        for name in engines:
            rates[(name, B)] = statistics.median(times[name])
            print(f"batch {B:>2} {name}: {rates[(name, B)]:,.0f} tok/s", flush=True)
    print("\n| variant | " + " | ".join(f"decode tok/s batch {b} (x bf16)" for b in batches)
          + " | size on disk MB (x bf16) |")
    print("|---|" + "---|" * len(batches) + "---|")
    for name in engines:
        cells = " | ".join(f"{rates[(name, b)]:,.0f} ({rates[(name, b)] / rates[('bf16', b)]:.2f})" for b in batches)
        print(f"| {name} | {cells} | {sizes[name] / 1e6:.2f} ({sizes[name] / sizes['bf16']:.2f}) |")
    print(f"\nload average after the run: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
