"""How many exposures does a tiny herd Llama 4 need to answer closed-book questions on people it only read about?

    HERD_HOME=/tmp/p .venv/bin/python benchmarks/knowledge_probe.py --entities 240 --paraphrases 4 --minutes 6
    HERD_HOME=/tmp/p .venv/bin/python benchmarks/knowledge_probe.py --entities 120 --paraphrases 16 --qa
    HERD_HOME=/tmp/p .venv/bin/python benchmarks/knowledge_probe.py --qa --arith-share 0.6     # arithmetic beside it

One process, no Ray. Builds the synthetic knowledge world (``herd.data.synthetic.knowledge``: people, paraphrased
biographies, questions; a quarter of the people held out) and trains one of the recipe's models from fresh
weights on the biographies of everyone, plus, with ``--qa``, the questions and answers of the training people in
the pretraining format ("Question: ...\\nAnswer: ...": "mixed training" in Physics of Language Models 3.1, which
is what makes facts read in biographies extractable by questions), plus with ``--arith-share`` that share of the
tokens from the data flow's worked arithmetic (the pipeline's competition for the same steps). Every
``--eval-every`` seconds it scores the held-out people's questions: greedy exact match and 4-way multiple choice
by log-likelihood (chance 0.25), each with its Wilson interval, and prints how many times each person's
biographies were seen. Reads the data flow's tokenizer (and corpus, for arithmetic) from $HERD_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch
from arith_probe import _output, train_step

from herd.data.synthetic import knowledge
from herd.eval.evalset import completion_prompt
from herd.eval.stats import wilson
from herd.model import Llama4, ModelConfig
from herd.model.generate import SamplingParams, generate
from herd.platform.config import load_recipe
from herd.train.loop import cpu_has_native_bf16
from herd.train.optim import build_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="student", help="key in the recipe's models")
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--entities", type=int, default=240)
    ap.add_argument("--paraphrases", type=int, default=4)
    ap.add_argument("--qa", action="store_true", help="training people's questions and answers in the text")
    ap.add_argument("--arith-share", type=float, default=0.0, help="share of rows that are worked arithmetic")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--rows", type=int, default=8, help="rows of --seq tokens per step")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--minutes", type=float, default=6.0, help="training time (evaluation not counted)")
    ap.add_argument("--eval-every", type=float, default=60.0, help="seconds of training between evaluations")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    from tokenizers import Tokenizer

    home = Path(os.environ.get("HERD_HOME", ".herd"))
    recipe = load_recipe(a.recipe)
    tok = Tokenizer.from_file(str(_output(home, "data.tokenizer", "tokenizer") / "tokenizer.json"))
    bos, eos = tok.token_to_id("<|begin_of_text|>"), tok.token_to_id("<|end_of_text|>")
    rng = np.random.default_rng(a.seed)
    people = knowledge.make_world(a.entities, rng)
    n_held = max(1, round(0.25 * len(people)))
    held, train_people = people[:n_held], people[n_held:]
    docs = [knowledge.biography(p, rng) for p in people for _ in range(a.paraphrases)]
    bio_tokens = sum(len(tok.encode(d, add_special_tokens=False).ids) + 2 for d in docs)
    if a.qa:  # one document per training person: its five questions in a random order
        docs += [knowledge.qa_document(p, rng) for p in train_people]
    random.shuffle(docs)
    stream: list[int] = []
    for d in docs:
        stream += [bos, *tok.encode(d, add_special_tokens=False).ids, eos]
    n = len(stream) // (a.seq + 1)
    data = torch.tensor(stream[: n * (a.seq + 1)]).view(n, a.seq + 1)
    arith = None
    if a.arith_share > 0:
        corpus = _output(home, "data.synthetic", "corpus") / "documents.jsonl"
        ids: list[int] = []
        for line in corpus.open():
            d = json.loads(line)
            if d.get("family") == "arithmetic":
                ids += [bos, *tok.encode(d["text"], add_special_tokens=False).ids, eos]
        m = len(ids) // (a.seq + 1)
        arith = torch.tensor(ids[: m * (a.seq + 1)]).view(m, a.seq + 1)

    bf16 = cpu_has_native_bf16()  # as the trainer's `precision: auto`: emulated bf16 is ~15x slower than fp32
    model = Llama4(ModelConfig.model_validate(recipe.models[a.model].model_dump()))
    opt = build_optimizer(model, recipe.pretrain.optim.model_copy(update={"lr": a.lr}))
    qs = [knowledge.question(p, attr) for p in held for attr in knowledge.ATTRIBUTES]
    prompts = [tok.encode(completion_prompt(q), add_special_tokens=False).ids for q, _ in qs]
    mc_rng = np.random.default_rng(1)
    attrs = [attr for _ in held for attr in knowledge.ATTRIBUTES]
    choices = [[ans, *knowledge.distractors(attr, ans, 3, mc_rng)] for (_, ans), attr in zip(qs, attrs, strict=True)]
    stops = [i for i in range(tok.get_vocab_size()) if "\n" in tok.decode([i], skip_special_tokens=False)]
    print(f"{a.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M params; {len(people)} people "
          f"({n_held} held out) x {a.paraphrases} biographies = {bio_tokens} tokens; qa {a.qa}; {n} rows of "
          f"{a.seq} knowledge tokens; arithmetic share {a.arith_share}; bf16 {bf16}", flush=True)

    def evaluate() -> tuple[float, float]:
        model.eval()
        with torch.no_grad():
            outs = [g for i in range(0, len(prompts), 100)
                    for g in generate(model, prompts[i:i + 100], SamplingParams(max_new_tokens=12, stop_tokens=stops))]
            em = sum(tok.decode(g.tokens).split("\n")[0].strip().rstrip(".") == ans
                     for g, (_, ans) in zip(outs, qs, strict=True))
            right = 0
            for p, opts in zip(prompts, choices, strict=True):
                seqs = [p + tok.encode(" " + o, add_special_tokens=False).ids for o in opts]
                width = max(map(len, seqs))
                x = torch.tensor([s + [eos] * (width - len(s)) for s in seqs])
                logp = torch.log_softmax(model(x[:, :-1]).logits.float(), -1)
                ll = [logp[j, len(p) - 1:len(s) - 1].gather(-1, x[j, len(p):len(s), None]).sum().item()
                      for j, s in enumerate(seqs)]
                right += int(np.argmax(ll) == 0)
        model.train()
        return em / len(qs), right / len(qs)

    trained, step, since_eval, perm, ptr, kn_rows = 0.0, 0, 0.0, torch.randperm(n), 0, 0
    while trained < a.minutes * 60:
        t0 = time.perf_counter()
        n_arith = round(a.rows * a.arith_share) if arith is not None else 0
        k = a.rows - n_arith
        if ptr + k > n:
            perm, ptr = torch.randperm(n), 0
        parts = [data[perm[ptr:ptr + k]]]
        ptr, kn_rows = ptr + k, kn_rows + k
        if n_arith:
            parts.append(arith[torch.randint(len(arith), (n_arith,))])
        b = torch.cat(parts)
        loss = train_step(model, opt, b, step, bf16=bf16)
        step += 1
        dt = time.perf_counter() - t0
        trained, since_eval = trained + dt, since_eval + dt
        if since_eval >= a.eval_every or trained >= a.minutes * 60:
            since_eval = 0.0
            em, mc = evaluate()
            ci = wilson(round(mc * len(qs)), len(qs))
            exposures = kn_rows * (a.seq + 1) / len(stream) * a.paraphrases
            print(f"t={trained:5.0f}s step={step:5d} loss={loss.item():.3f} biographies seen per person "
                  f"{exposures:5.1f} exact={em:.3f} mc={mc:.3f} [{ci.lo:.3f}, {ci.hi:.3f}] (n {len(qs)})", flush=True)


if __name__ == "__main__":
    main()
