"""How fast does a tiny herd Llama 4 learn the arithmetic task from worked examples? One process, no Ray.

    HERD_HOME=/tmp/p .venv/bin/python benchmarks/arith_probe.py --model student --minutes 3 --rows 4
    HERD_HOME=/tmp/p .venv/bin/python benchmarks/arith_probe.py --model student --model-set use_qk_norm=false
    HERD_HOME=/tmp/p .venv/bin/python benchmarks/arith_probe.py --minutes 6 --bf16 --max-new 40 --format plain   # vs steps

Trains one of the recipe's models (fresh weights, herd's AdamW with MetaP groups, constant lr after a 20-step
warmup) on a finished pipeline's training text (only the worked arithmetic with ``--mix arith``, else every
family), and every ``--eval-every`` seconds of training greedily answers held-out eval-set problems in the
pretraining format ("Question: ...\\nSolution:"). It prints exact match per problem kind and the **copy rate**: the
share of answers that start with the question's first number. The tiny models' first obstacle is copying a
question's numbers into the worked answer; their arithmetic starts only after it (docs/benchmarks.md,
"posttrain"). Reads the data flow's tokenizer and corpus and the evaluate flow's eval set from $HERD_HOME.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import time
from pathlib import Path

import torch

from herd.data.synthetic.arithmetic import check_answer
from herd.model import Llama4, ModelConfig
from herd.model.generate import SamplingParams, generate
from herd.platform.config import load_recipe
from herd.train.optim import build_optimizer


def _output(home: Path, step: str, name: str) -> Path:
    digest = json.loads((home / "artifacts/steps" / step / "latest.json").read_text())["outputs"][name]
    return home / "artifacts/objects" / digest[:2] / digest


def train_step(model: Llama4, opt: torch.optim.Optimizer, batch: torch.Tensor, step: int, *, bf16: bool) -> torch.Tensor:
    """One next-token step on `batch` (rows of seq + 1 tokens): 20-step linear warmup, clip 1.0, router bias update."""
    for g in opt.param_groups:
        g.setdefault("initial_lr", g["lr"])
        g["lr"] = g["initial_lr"] * min(1.0, (step + 1) / 20)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch[:, :-1])
    loss = torch.nn.functional.cross_entropy(out.logits.flatten(0, 1).float(), batch[:, 1:].flatten())
    (loss + (out.aux_loss if out.aux_loss is not None else 0)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for m in model.modules():  # aux-free router balancing, as herd's trainer does after each step
        if hasattr(m, "update_router_bias") and not any(
                c is not m and hasattr(c, "update_router_bias") for c in m.modules()):
            m.update_router_bias()
    return loss.detach()


def kind(question: str) -> str:
    return ("add" if "gets" in question else "sub" if "gave" in question else "mul" if "in each" in question
            else "div" if "shares" in question else "3op")


_SOLUTION = re.compile(r"Solution: (?P<expr>[-+*/ \d]+?) = (?:[-+*/ \d]+ = )*(?P<n>-?\d+)\. The answer is (?P=n)\.")


def rerender(text: str, fmt: str) -> str:
    """A text's worked solutions in one format: 'plain' (one step) or 'steps' (herd's stepped solutions)."""
    from herd.data.synthetic.arithmetic import stepped

    def one(m: re.Match[str]) -> str:
        n = int(m["n"])
        return "Solution: " + (stepped(m["expr"], n) if fmt == "steps" else f"{m['expr']} = {n}. The answer is {n}.")

    return _SOLUTION.sub(one, text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="student", help="key in the recipe's models")
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rows", type=int, default=8, help="rows of --seq tokens per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=3.0, help="training time (evaluation not counted)")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    ap.add_argument("--items", type=int, default=300, help="held-out problems per evaluation")
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--bf16", action="store_true", help="autocast the forward to bf16, as herd's trainer does")
    ap.add_argument("--mix", choices=["arith", "all"], default="arith")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", choices=["as-is", "plain", "steps"], default="as-is",
                    help="re-render each worked solution: plain 'a + b = N.', steps as herd's data writes them "
                         "(herd.data.synthetic.arithmetic.stepped); as-is: the corpus's text")
    ap.add_argument("--model-set", action="append", default=[], metavar="FIELD=JSON",
                    help="override a model field, e.g. use_qk_norm=false, attention_chunk_size=null")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    random.seed(0)
    from tokenizers import Tokenizer

    home = Path(os.environ.get("HERD_HOME", ".herd"))
    recipe = load_recipe(a.recipe)
    tok = Tokenizer.from_file(str(_output(home, "data.tokenizer", "tokenizer") / "tokenizer.json"))
    corpus = _output(home, "data.synthetic", "corpus") / "documents.jsonl"
    docs = [json.loads(line) for line in corpus.open()]
    if a.mix == "arith":
        docs = [d for d in docs if d.get("family") == "arithmetic"]
    random.shuffle(docs)
    if a.format != "as-is":
        docs = [{**d, "text": rerender(d["text"], a.format)} for d in docs]
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    stream: list[int] = []
    for d in docs:
        stream += [bos, *tok.encode(d["text"], add_special_tokens=False).ids, eos]
    n = len(stream) // (a.seq + 1)
    data = torch.tensor(stream[: n * (a.seq + 1)]).view(n, a.seq + 1)
    fields = recipe.models[a.model].model_dump()
    for kv in a.model_set:
        k, v = kv.split("=", 1)
        fields[k] = json.loads(v)
    model = Llama4(ModelConfig.model_validate(fields))
    opt = build_optimizer(model, recipe.pretrain.optim.model_copy(update={"lr": a.lr}))
    evalset = _output(home, "evaluate.evalset", "evalset") / "arithmetic.jsonl"
    items = [json.loads(line) for line in evalset.open()][: a.items]
    prompts = [tok.encode(it["prompt"], add_special_tokens=False).ids for it in items]
    stops = [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i], skip_special_tokens=False)]
    stops.append(tok.token_to_id("<|eot|>"))
    print(f"{a.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params; {n} rows of {a.seq} "
          f"tokens ({a.mix}); {a.rows} rows per step, lr {a.lr}; {' '.join(a.model_set)}", flush=True)

    def evaluate() -> tuple[float, float, dict[str, float]]:
        model.eval()
        with torch.no_grad():
            outs = [g for i in range(0, len(prompts), 100)
                    for g in generate(model, prompts[i:i + 100], SamplingParams(max_new_tokens=a.max_new, stop_tokens=stops))]
        model.train()
        per: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
        copied = 0
        for it, g in zip(items, outs, strict=True):
            text = tok.decode(g.tokens).split("\n")[0]
            per[kind(it["question"])][0] += check_answer(text, it["answer"])
            per[kind(it["question"])][1] += 1
            nums = [w for w in it["question"].replace(".", " ").replace("?", " ").split() if w.isdigit()]
            copied += bool(nums) and text.strip().startswith(nums[0])
        acc = sum(v[0] for v in per.values()) / len(items)
        return acc, copied / len(items), {k: round(v[0] / v[1], 3) for k, v in sorted(per.items())}

    trained, step, since_eval, perm, ptr = 0.0, 0, 0.0, torch.randperm(n), 0
    while trained < a.minutes * 60:
        t0 = time.perf_counter()
        if ptr + a.rows > n:
            perm, ptr = torch.randperm(n), 0
        b = data[perm[ptr:ptr + a.rows]]
        ptr += a.rows
        loss = train_step(model, opt, b, step, bf16=a.bf16)
        step += 1
        dt = time.perf_counter() - t0
        trained, since_eval = trained + dt, since_eval + dt
        if since_eval >= a.eval_every or trained >= a.minutes * 60:
            since_eval = 0.0
            acc, copy, per = evaluate()
            print(f"t={trained:5.0f}s step={step:5d} tokens={step * a.rows * a.seq:8d} loss={loss.item():.3f} "
                  f"exact={acc:.3f} copy={copy:.2f} {per}", flush=True)


if __name__ == "__main__":
    main()
