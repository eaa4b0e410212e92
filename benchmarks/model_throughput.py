"""herd's Llama 4 vs transformers' Llama4ForCausalLM: training-step and decode throughput, same config and weights,
same run, plus achieved FLOP/s against a plain matmul's peak measured in the same run.

    .venv/bin/python -m benchmarks.model_throughput            # full run (~5-10 min on 2 cores)
    .venv/bin/python -m benchmarks.model_throughput --quick    # smoke run

What is compared:
  train   forward + backward (next-token cross-entropy) on a (batch, seq) batch of a 16-expert, top-1 model;
          tokens/s = batch·seq / step time. transformers runs every expert on every token; herd routes sparsely.
  decode  greedy generation at batch 1: herd.model.generate.generate vs transformers' generate (DynamicCache),
          same prompt, eos disabled, same number of new tokens (the produced tokens are checked to be equal).
  MFU     model FLOPs (6·active-params-per-token·tokens plus attention, top-k experts only) per second, divided by
          the FLOP/s of one large matmul of the same dtype timed in this run.
herd and transformers steps are interleaved rep by rep so load from other processes hits both alike; medians.
Results go to docs/benchmarks.md ("## model").
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from herd.model import Llama4, ModelConfig, save_hf
from herd.model.generate import SamplingParams, generate


def bench_config(quick: bool) -> ModelConfig:
    return ModelConfig(
        vocab_size=8192,
        hidden_size=256,
        num_hidden_layers=2 if quick else 4,
        num_attention_heads=8,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=512,
        intermediate_size_mlp=1024,
        num_local_experts=16,
        num_experts_per_tok=1,
        interleave_moe_layer_step=1,
        attention_chunk_size=128,
        max_position_embeddings=4096,
        initializer_range=0.05,
    )


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / min(times)


def train_step(model: torch.nn.Module, ids: torch.Tensor, autocast: torch.dtype | None) -> None:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
        out = model(ids[:, :-1])
        logits = out.logits if hasattr(out, "logits") else out[0]
        loss = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
        aux = getattr(out, "aux_loss", None)
        if aux is not None:
            loss = loss + aux
    loss.backward()


def interleaved(fns: dict[str, Callable[[], None]], reps: int, warmup: int = 1) -> dict[str, float]:
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import transformers

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = bench_config(args.quick)
    if args.quick:
        args.seq, args.reps, args.new_tokens = 256, 2, 32
    herd = Llama4(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(herd, tmp)  # the same weights, through herd's exporter
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa")

    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    # bf16 only helps where the CPU has AMX (bf16 matmul faster than fp32); otherwise train in fp32
    autocast = torch.bfloat16 if peaks["bfloat16"] > 1.2 * peaks["float32"] else None
    train_dtype = "bfloat16" if autocast is not None else "float32"

    ids = torch.randint(13, cfg.vocab_size, (args.batch, args.seq + 1))
    herd.train()
    hf.train()
    t = interleaved(
        {"herd": lambda: train_step(herd, ids, autocast), "transformers": lambda: train_step(hf, ids, None)},
        args.reps,
    )
    tokens = args.batch * args.seq
    flops = 3 * cfg.flops_per_token(args.seq) * tokens  # backward = 2 x forward
    train = {k: {"step_s": v, "tokens_per_s": tokens / v, "tflops": flops / v / 1e12} for k, v in t.items()}
    train["herd"]["mfu"] = flops / t["herd"] / peaks[train_dtype]
    train["transformers"]["mfu"] = flops / t["transformers"] / peaks["float32"]

    herd.eval()
    hf.eval()
    prompt = torch.randint(13, cfg.vocab_size, (1, args.prompt))
    params = SamplingParams(max_new_tokens=args.new_tokens, stop_tokens=[])
    got: dict[str, list[int]] = {}

    def run_herd() -> None:
        got["herd"] = generate(herd, [prompt[0].tolist()], params)[0].tokens

    def run_hf() -> None:
        with torch.inference_mode():
            out = hf.generate(
                prompt,
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=cfg.pad_token_id,
            )
        got["transformers"] = out[0, args.prompt :].tolist()

    d = interleaved({"herd": run_herd, "transformers": run_hf}, max(2, args.reps - 2))
    decode = {k: {"s": v, "tokens_per_s": args.new_tokens / v} for k, v in d.items()}
    decode_flops = 2 * cfg.flops_per_token(args.prompt + args.new_tokens // 2) * args.new_tokens
    decode["herd"]["mfu"] = decode_flops / d["herd"] / peaks["float32"]
    same = got["herd"] == got["transformers"]

    result = {
        "config": {
            k: getattr(cfg, k)
            for k in (
                "vocab_size",
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "head_dim",
                "intermediate_size",
                "num_local_experts",
                "num_experts_per_tok",
                "attention_chunk_size",
            )
        },
        "params_total": cfg.num_params(),
        "params_active": cfg.num_active_params(),
        "batch": args.batch,
        "seq": args.seq,
        "threads": torch.get_num_threads(),
        "load_average_1_5_15": os.getloadavg(),  # other processes on the box: ratios hold, absolutes suffer
        "matmul_peak_tflops": {k: v / 1e12 for k, v in peaks.items()},
        "herd_train_dtype": train_dtype,
        "train": train,
        "train_speedup": t["transformers"] / t["herd"],
        "decode": decode,
        "decode_speedup": d["transformers"] / d["herd"],
        "decode_tokens_equal": same,
    }
    print(json.dumps(result, indent=2))
    print()
    print("| measurement | herd | transformers | ratio |")
    print("|---|---|---|---|")
    print(
        f"| train tokens/s (fwd+bwd, B={args.batch}, S={args.seq}) | {train['herd']['tokens_per_s']:.0f} "
        f"| {train['transformers']['tokens_per_s']:.0f} | {result['train_speedup']:.2f}x |"
    )
    print(
        f"| train MFU vs {train_dtype} matmul peak | {train['herd']['mfu']:.1%} "
        f"| {train['transformers']['mfu']:.1%} | |"
    )
    print(
        f"| decode tokens/s (batch 1, {args.new_tokens} new) | {decode['herd']['tokens_per_s']:.1f} "
        f"| {decode['transformers']['tokens_per_s']:.1f} | {result['decode_speedup']:.2f}x |"
    )
    print(
        f"| matmul peak TFLOP/s fp32 / bf16 | {peaks['float32'] / 1e12:.3f} / {peaks['bfloat16'] / 1e12:.3f} "
        "| | |"
    )
    if not same:
        print("WARNING: herd and transformers generated different tokens")


if __name__ == "__main__":
    main()
