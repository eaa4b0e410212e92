"""Offline decode throughput of herd's continuous-batching engine vs herd's static ``generate`` and
transformers' batched ``generate``, side by side in one run, on a random model of the tiny recipe's teacher size.

    .venv/bin/python -m benchmarks.engine_throughput                  # ~3 min on 2 idle cores
    .venv/bin/python -m benchmarks.engine_throughput --threads 1 --json out.json   # on a loaded box

Same weights (herd's model exported with ``save_hf``, loaded by transformers with sdpa), fp32, greedy, every
request a random ``--prompt``-token prompt and exactly ``--new`` generated tokens (EOS ignored), in one process:

  herd engine     ``herd.serve.engine.Engine.generate_batch``: N requests submitted at once, continuously batched
                  (max_num_seqs = N, max_num_batched_tokens 512)
  herd static     ``herd.model.generate.generate``: all N prompts in one static batch
  transformers    ``Llama4ForCausalLM.generate`` on the N prompts as one batch (DynamicCache)

at N = 1 and N = 32 concurrent requests, plus the engine serving the same 32 requests one at a time (the
baseline of the ">= 8x at 32 clients" target) and a mixed-length workload (64 requests, 8..128 new tokens),
where continuous batching refills freed slots and a static batch waits for its longest row. tok/s = generated
tokens / time (prefill included); time is wall time, or with ``--clock cpu --threads 1`` the process's CPU time,
which other processes on a shared box cannot inflate. Time to first token (TTFT) is measured per request from submission.
Each measurement is repeated ``--repeat`` times, interleaved across systems; the best time is kept.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Run each fn ``repeat`` times, interleaved; return each one's best time (least disturbed by load).

    The time is this process's CPU time when ``CLOCK`` is "cpu" (with one torch thread, the work done, which other
    processes on a shared box cannot inflate), else wall time."""
    clock = time.process_time if CLOCK == "cpu" else time.perf_counter
    best = {k: float("inf") for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = clock()
            fn()
            best[k] = min(best[k], clock() - t)
    return best


CLOCK = "wall"


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens per request")
    ap.add_argument("--new", type=int, default=128, help="generated tokens per request")
    ap.add_argument("--clients", type=int, default=32, help="concurrent requests of the batched runs")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved repetitions (best kept)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="cpu: time by this process's CPU time (use with --threads 1 on a box shared with other work)",
    )
    args = ap.parse_args()
    global CLOCK
    CLOCK = args.clock
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu needs --threads 1 (CPU time of several threads is not elapsed time)")

    import transformers

    from herd.model import Llama4, save_hf
    from herd.model.generate import SamplingParams as StaticParams
    from herd.model.generate import generate
    from herd.platform.config import load_recipe
    from herd.serve.engine import Engine, EngineConfig, SamplingParams

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_recipe("tiny").models["teacher"]
    torch.manual_seed(0)
    model = Llama4(cfg).eval()
    with tempfile.TemporaryDirectory() as tmp:
        save_hf(model, tmp)
        hf = transformers.AutoModelForCausalLM.from_pretrained(tmp, attn_implementation="sdpa").eval()
    N, P, M = args.clients, args.prompt, args.new
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(13, cfg.vocab_size, (N, P), generator=g)
    plist = prompts.tolist()
    max_len = P + M + 8
    engine = Engine(
        model, None, EngineConfig(max_num_seqs=N, max_model_len=max_len, max_num_batched_tokens=512)
    )
    greedy = SamplingParams(max_tokens=M, temperature=0.0, ignore_eos=True)
    static = StaticParams(max_new_tokens=M, stop_tokens=[])
    got: dict[str, object] = {}

    def eng(batch: list[list[int]], key: str) -> None:
        outs = engine.generate_batch(batch, greedy)
        got[key] = outs

    def eng_sequential() -> None:
        got["seq"] = [engine.generate_batch([p], greedy)[0] for p in plist]

    def stat(batch: list[list[int]], key: str) -> None:
        got[key] = [o.tokens for o in generate(model, batch, static)]

    def hf_gen(ids: torch.Tensor, key: str) -> None:
        with torch.inference_mode():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=M,
                do_sample=False,
                eos_token_id=None,  # exactly M tokens, as the others (EOS ignored)
                pad_token_id=cfg.pad_token_id,
            )
        got[key] = out[:, P:].tolist()

    eng(plist[:2], "warm")  # first-call costs (allocator, kernels) out of the timings
    t1 = best_of(
        {
            "engine": lambda: eng(plist[:1], "e1"),
            "static": lambda: stat(plist[:1], "s1"),
            "transformers": lambda: hf_gen(prompts[:1], "h1"),
        },
        args.repeat,
    )
    tN = best_of(
        {
            "engine": lambda: eng(plist, "eN"),
            "static": lambda: stat(plist, "sN"),
            "transformers": lambda: hf_gen(prompts, "hN"),
        },
        args.repeat,
    )
    t_seq = best_of({"engine_one_at_a_time": eng_sequential}, 1)["engine_one_at_a_time"]
    ttft = [o.ttft_s for o in got["eN"]]  # type: ignore[union-attr]
    ttft1 = [o.ttft_s for o in got["seq"]]  # type: ignore[union-attr]

    # mixed output lengths: continuous batching refills slots; a static batch of 32 runs until its longest row
    g2 = torch.Generator().manual_seed(2)
    mixed_n = torch.randint(8, M + 1, (2 * N,), generator=g2).tolist()
    mixed_prompts = torch.randint(13, cfg.vocab_size, (2 * N, P), generator=g2).tolist()
    mixed_params = [SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True) for n in mixed_n]

    def eng_mixed() -> None:
        engine.generate_batch(mixed_prompts, mixed_params)

    def stat_mixed() -> None:  # static batches of N; each row still stops at its own length, the batch waits
        for i in range(0, 2 * N, N):
            outs = generate(
                model,
                mixed_prompts[i : i + N],
                StaticParams(max_new_tokens=max(mixed_n[i : i + N]), stop_tokens=[]),
            )
            assert len(outs) == len(mixed_prompts[i : i + N])

    t_mixed = best_of({"engine": eng_mixed, "static": stat_mixed}, args.repeat)
    useful = sum(mixed_n)

    same1 = [o.token_ids for o in got["e1"]] == got["s1"]  # type: ignore[union-attr]
    sameN = [o.token_ids for o in got["eN"]] == got["sN"]  # type: ignore[union-attr]
    same_hf = got["sN"] == got["hN"]
    res = {
        "config": {
            "model": "tiny recipe teacher (random weights)",
            "params": cfg.num_params(),
            "prompt": P,
            "new_tokens": M,
            "clients": N,
            "threads": torch.get_num_threads(),
            "clock": args.clock,
            "dtype": "float32",
        },
        "tok_s_1": {k: M / v for k, v in t1.items()},
        f"tok_s_{N}": {k: N * M / v for k, v in tN.items()},
        f"tok_s_{N}_one_at_a_time_engine": N * M / t_seq,
        "ratio_engine_N_vs_one_at_a_time": (N * M / tN["engine"]) / (N * M / t_seq),
        "ratio_engine_vs_static_1": t1["static"] / t1["engine"],
        "ratio_engine_vs_static_N": tN["static"] / tN["engine"],
        "ratio_engine_vs_transformers_1": t1["transformers"] / t1["engine"],
        "ratio_engine_vs_transformers_N": tN["transformers"] / tN["engine"],
        f"ttft_s_{N}_concurrent": {"p50": statistics.median(ttft), "p95": pct(ttft, 0.95)},
        "ttft_s_1": {"p50": statistics.median(ttft1), "p95": pct(ttft1, 0.95)},
        "mixed_lengths_useful_tok_s": {k: useful / v for k, v in t_mixed.items()},
        "greedy_equal": {
            "engine_vs_static_1": same1,
            f"engine_vs_static_{N}": sameN,
            f"static_vs_transformers_{N}": same_hf,
        },
    }
    engine.shutdown()
    print(json.dumps(res, indent=2))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
