"""Rollout speed, herd's continuous-batching engine vs the static KV-cache sampler, side by side on one model.

    HERD_HOME=/tmp/h .venv/bin/python benchmarks/posttrain_rollout.py --model sft.train --prompts 32 --group 8
    ... --model pretrain.train --group 2          # the judge's case (the teacher, pass@2)

Same prompts (the RL pool's, rendered as the RL step renders them), same temperature, max_new_tokens and stop
token; interleaved, best of --reps. Reports wall seconds, generated tokens and tokens/s for both, and the
ratio. The model is read from the finished step's output in HERD_HOME's store (`herd run` first).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _output(home: Path, step: str, name: str) -> Path:
    rec = max((home / "artifacts" / "steps" / step).glob("*.json"), key=lambda p: p.stat().st_mtime)
    digest = json.loads(rec.read_text())["outputs"][name]
    return home / "artifacts" / "objects" / digest[:2] / digest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="sft.train", help="step whose `model` output is rolled out")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from herd.data.tokenizer import EOT_ID
    from herd.model import load_hf
    from herd.posttrain.config import RLConfig
    from herd.posttrain.data import encode_prompt
    from herd.posttrain.rollout import sample, sample_engine
    from herd.posttrain.stage import load_tokenizer, rl_pool

    torch.set_num_threads(args.threads)
    home = Path(os.environ.get("HERD_HOME", ".herd"))
    tok = load_tokenizer(_output(home, "data.tokenizer", "tokenizer"))
    pool = rl_pool(_output(home, "data.synthetic", "tasks"), RLConfig())
    model = load_hf(str(_output(home, args.model, "model")))
    step = len(pool) // args.prompts
    ids = [encode_prompt(tok, p.messages) for p in pool[::step][:args.prompts] for _ in range(args.group)]
    best: dict[str, tuple[float, int]] = {}
    for rep in range(args.reps):
        for name, fn in (("static", sample), ("engine", sample_engine)):
            t = time.perf_counter()
            outs = fn(model, ids, temperature=1.0, max_new_tokens=args.max_new_tokens, stop=[EOT_ID], seed=rep)
            dt = time.perf_counter() - t
            n = sum(len(o.tokens) for o in outs)
            if name not in best or dt < best[name][0]:
                best[name] = (dt, n)
    for name, (dt, n) in best.items():
        print(f"{name:7s} {len(ids)} rollouts  {dt:7.2f} s  {n} tokens  {n / dt:8.0f} tok/s")
    print(f"engine / static speed: {best['static'][0] / best['engine'][0]:.2f}x")


if __name__ == "__main__":
    main()
