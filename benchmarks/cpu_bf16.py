"""Is bf16 training worth it on this CPU? One training step of a recipe's model in fp32 vs under bf16 autocast.

    .venv/bin/python benchmarks/cpu_bf16.py --recipe small --model student --reps 3

Times forward + backward of `--rows` x `--seq` random tokens (2 threads, the trainer's per-box share), the two
precisions interleaved rep by rep, and prints medians, their ratio and what `precision: auto` would pick here
(``herd.train.loop.cpu_has_native_bf16``). Without native bf16 (no AVX-512 BF16 / AMX) autocast emulates it and
the step is many times slower, which is why `auto` trains in fp32 there (docs/benchmarks.md, "posttrain").
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from herd.model import Llama4, ModelConfig
from herd.platform.config import load_recipe
from herd.train.loop import cpu_has_native_bf16


def step_seconds(model: Llama4, batch: torch.Tensor, *, bf16: bool) -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch)
    out.logits.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--model", default="student")
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = ModelConfig.model_validate(load_recipe(a.recipe).models[a.model].model_dump())
    model = Llama4(cfg)
    batch = torch.randint(0, cfg.vocab_size, (a.rows, a.seq))
    step_seconds(model, batch, bf16=False)  # warm-up: allocator, kernels
    fp32, bf16 = [], []
    for _ in range(a.reps):
        fp32.append(step_seconds(model, batch, bf16=False))
        bf16.append(step_seconds(model, batch, bf16=True))
    f, b = statistics.median(fp32), statistics.median(bf16)
    print(f"{a.recipe}/{a.model}, {a.rows} x {a.seq} tokens, {a.threads} threads: fp32 {f:.3f} s, bf16 autocast "
          f"{b:.3f} s a step (bf16 / fp32 = {b / f:.2f}); native bf16: {cpu_has_native_bf16()}, so "
          f"precision: auto -> {'bf16' if cpu_has_native_bf16() else 'fp32'}")


if __name__ == "__main__":
    main()
