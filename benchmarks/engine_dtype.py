"""herd's engine by weight and KV-cache dtype on CPU: batch-32 decode vs one request at a time, side by side.

    .venv/bin/python -m benchmarks.engine_dtype --threads 1            # ~2 min on 2 idle cores

The tiny recipe's teacher (random weights), 32 random 32-token prompts, 128 greedy new tokens each (EOS ignored),
``Engine.generate_batch`` in one process, three engines on the same weights:

  fp32               fp32 weights, fp32 KV slots and attention (``deploy.dtype`` float32, the default)
  bf16 + fp32 KV     bf16 weights; KV slots and attention in fp32 (``EngineConfig.kv_dtype`` auto on CPU)
  bf16 + bf16 KV     bf16 weights and KV (``kv_dtype: bfloat16``: attention in bf16, CPU's slow path here)

tok/s for the 32 requests submitted together and for ``--sequential`` of them one at a time; each measurement
repeated ``--repeat`` times interleaved across engines, the best kept (``engine_throughput.best_of``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from benchmarks.engine_throughput import best_of


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--sequential", type=int, default=4, help="requests of the one-at-a-time run")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    from herd.model import Llama4
    from herd.platform.config import load_recipe
    from herd.serve.engine import Engine, EngineConfig, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recipe("tiny").models["teacher"]
    torch.manual_seed(0)
    fp32 = Llama4(cfg).eval()
    bf16 = Llama4(cfg).eval()
    bf16.load_state_dict(fp32.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    N, P, M = args.clients, args.prompt, args.new
    prompts = torch.randint(13, cfg.vocab_size, (N, P), generator=torch.Generator().manual_seed(1)).tolist()
    ecfg = {"max_num_seqs": N, "max_model_len": P + M + 8, "max_num_batched_tokens": 512}
    engines = {
        "fp32": Engine(fp32, None, EngineConfig(**ecfg)),
        "bf16 + fp32 KV": Engine(bf16, None, EngineConfig(**ecfg, kv_dtype="auto")),
        "bf16 + bf16 KV": Engine(bf16, None, EngineConfig(**ecfg, kv_dtype="bfloat16")),
    }
    greedy = SamplingParams(max_tokens=M, temperature=0.0, ignore_eos=True)
    for e in engines.values():
        e.generate_batch(prompts[:2], SamplingParams(max_tokens=8, ignore_eos=True))  # first-call costs out

    def together(e: Engine) -> None:
        e.generate_batch(prompts, greedy)

    def one_at_a_time(e: Engine) -> None:
        for p in prompts[: args.sequential]:
            e.generate_batch([p], greedy)

    tN = best_of({k: (lambda e=e: together(e)) for k, e in engines.items()}, args.repeat)
    t1 = best_of({k: (lambda e=e: one_at_a_time(e)) for k, e in engines.items()}, args.repeat)
    res = {k: {f"tok_s_{N}": N * M / tN[k], "tok_s_1": args.sequential * M / t1[k],
               "ratio": (N * M / tN[k]) / (args.sequential * M / t1[k])} for k in engines}
    print(f"| engine ({torch.get_num_threads()} thread(s), {M} new tokens) | tok/s, {N} together | tok/s, one at a "
          f"time | ratio |\n|---|---|---|---|")
    for k, r in res.items():
        print(f"| {k} | {r[f'tok_s_{N}']:.0f} | {r['tok_s_1']:.0f} | {r['ratio']:.1f}x |")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
