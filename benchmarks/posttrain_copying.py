"""Does a post-trained model copy the question's numbers, and are its right answers worked or guessed?

    HERD_HOME=/tmp/p .venv/bin/python benchmarks/posttrain_copying.py sft.train rl.train dpo.train

For each step's `model` output of a finished pipeline in $HERD_HOME, greedily answers the first --prompts
arithmetic prompts of the RL pool (or, with --source eval, of the evaluation's held-out items) in the chat format
(herd's engine, stop at <|eot|>, 48 new tokens) and prints the share of answers that are correct (the last
number), in the worked format ('a + b [= steps] = N. The answer is N.', herd.posttrain.rewards.worked_operands),
that take intermediate steps, start with the question's first number, use all of the question's numbers as
operands (grounded: what RL's format bonus and `require_work` check, herd.posttrain.rewards.format_ok), and are
correct with that work; and the share correct per kind of problem (add, sub, mul, div, 3-operand).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("steps", nargs="+", help="steps whose `model` output is scored, e.g. sft.train rl.train")
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--source", choices=["rl", "eval"], default="rl",
                    help="the RL pool's arithmetic prompts, or the evaluate flow's held-out items (chat format)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from benchmarks.arith_probe import kind
    from benchmarks.posttrain_rollout import _output
    from herd.data.tokenizer import EOT_ID
    from herd.model import load_hf
    from herd.posttrain.config import RLConfig
    from herd.posttrain.data import encode_prompt
    from herd.posttrain.rewards import Prompt, format_ok, is_correct, question_numbers, worked_operands
    from herd.posttrain.stage import load_tokenizer, rl_pool
    from herd.serve.engine import SamplingParams, generate_once

    torch.set_num_threads(args.threads)
    home = Path(os.environ.get("HERD_HOME", ".herd"))
    tok = load_tokenizer(_output(home, "data.tokenizer", "tokenizer"))
    if args.source == "rl":
        pool = [p for p in rl_pool(_output(home, "data.synthetic", "tasks"), RLConfig())
                if p.capability == "arithmetic"][:args.prompts]
    else:
        text = (_output(home, "evaluate.evalset", "evalset") / "arithmetic.jsonl").read_text()
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        pool = [Prompt(f"eval-{i}", [{"role": "user", "content": r["question"]}], str(r["answer"]), "arithmetic")
                for i, r in enumerate(rows[:args.prompts])]
    ids = [encode_prompt(tok, p.messages) for p in pool]
    for step in args.steps:
        model = load_hf(str(_output(home, step, "model"))).eval()
        gens = generate_once(model, ids, SamplingParams(max_tokens=48, temperature=0.0, stop_token_ids=[EOT_ID],
                                                        ignore_eos=True), max_num_seqs=64, max_num_batched_tokens=2048)
        n = dict.fromkeys(("correct", "worked", "first_copied", "all_copied", "correct_with_work", "stepped"), 0)
        by_kind: dict[str, list[int]] = {}
        for p, g in zip(pool, gens, strict=True):
            text = tok.decode([t for t in g.token_ids if t != EOT_ID], skip_special_tokens=True)
            correct, grounded = is_correct(p, text) >= 0.5, format_ok(p, text, True)
            nums = re.findall(r"\d+", text)
            n["correct"] += correct
            n["worked"] += worked_operands(text) is not None
            n["first_copied"] += bool(nums) and int(nums[0]) == question_numbers(p)[0]
            n["all_copied"] += grounded
            n["correct_with_work"] += correct and grounded
            n["stepped"] += text.count("=") >= 2  # intermediate steps ("26 + 47 = 60 + 13 = 73.")
            k = by_kind.setdefault(kind(p.messages[-1]["content"]), [0, 0])
            k[0], k[1] = k[0] + correct, k[1] + 1
        print(step, {k: round(v / len(pool), 3) for k, v in n.items()},
              "correct by kind", {k: round(c / t, 2) for k, (c, t) in sorted(by_kind.items())}, flush=True)


if __name__ == "__main__":
    main()
