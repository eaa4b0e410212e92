"""Post-training ablations with several seeds (issue 11): hard-only SFT vs SFT on all data at equal steps, and RL
with vs without adaptive filtering and the curriculum.

    HERD_HOME=/tmp/h .venv/bin/python benchmarks/posttrain_ablation.py --recipe tiny --seeds 0,1,2 --json out.json
    HERD_HOME=/tmp/s .venv/bin/python benchmarks/posttrain_ablation.py --recipe small --only sft

Every variant runs through herd's Runner on one Ray, so whatever it shares with a cached run is reused: data,
pretrain, distill, and the judge once per `easy_fraction` (its cache key holds only what it reads). A variant is
the recipe plus overrides plus the seed of the stage under test (`posttrain.sft.seed` / `posttrain.rl.seed`):
- SFT: `hard-only` (the recipe's easy_fraction) vs `all data` (easy_fraction 0), same steps, batch and lr;
- RL: `filter + curriculum` (the recipe) vs `neither` (zero-variance groups trained, prompts drawn uniformly), from
  the same SFT model (the recipe's, seed 0), same steps.
Each model is scored greedily, in the chat format, on the evaluate flow's held-out arithmetic (1,000) and knowledge
(300) items, the items of the pipeline's eval table (herd.posttrain.measure; --limit of each). Reported per seed (accuracy, Wilson 95% interval) and per
pair of variants: the mean over seeds of the paired delta, its per-seed values, and the exact McNemar p-value of
all seeds' items pooled (each seed pairs the two variants on the same items).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ABLATIONS = {
    "sft": ("sft.train", "posttrain.sft.seed", {"hard-only": [], "all data": ["posttrain.sft.easy_fraction=0.0"]}),
    "rl": ("rl.train", "posttrain.rl.seed", {"filter + curriculum": [], "neither": [
        "posttrain.rl.filter_zero_variance=false", "posttrain.rl.curriculum=false"]}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--set", action="append", default=[], dest="overrides", help="applied to every variant")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", choices=sorted(ABLATIONS), action="append", help="one ablation (default: both)")
    ap.add_argument("--limit", type=int, default=1000, help="items per suite")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from herd.cli import pipeline_steps
    from herd.eval.stats import mcnemar, wilson
    from herd.model import load_hf
    from herd.platform.config import RuntimeConfig, load_recipe
    from herd.platform.runner import Runner
    from herd.platform.runtime import Runtime
    from herd.posttrain.measure import eval_prompts, score_items
    from herd.posttrain.stage import _tasks, load_tokenizer

    seeds = [int(s) for s in args.seeds.split(",")]
    runner = Runner(Runtime(RuntimeConfig()), progress=True)
    out: dict = {"recipe": args.recipe, "overrides": args.overrides, "seeds": seeds, "ablations": {}}
    try:
        suites = tok = None
        for name in args.only or sorted(ABLATIONS):
            step, seed_key, variants = ABLATIONS[name]
            scores: dict[str, dict[int, dict[str, list[int]]]] = {}
            rows = []
            for variant, extra in variants.items():
                for seed in seeds:
                    recipe = load_recipe(args.recipe, [*args.overrides, *extra, f"{seed_key}={seed}"])
                    t0 = time.perf_counter()
                    res = runner.run(pipeline_steps(recipe, ["rl"]), [step])
                    wall = time.perf_counter() - t0
                    if suites is None:  # the evaluate flow's held-out set: the items of the pipeline's eval table
                        evalset = runner.store.get(runner.run(pipeline_steps(recipe, ["evaluate"]),
                                                              ["evaluate.evalset"]).outputs["evaluate.evalset"]
                                                   ["evalset"]).local_path()
                        tok = load_tokenizer(runner.store.get(res.outputs["data.tokenizer"]["tokenizer"])
                                             .local_path())
                        suites = {s: eval_prompts(_tasks(evalset, s), s, args.limit)
                                  for s in ("arithmetic", "knowledge")}
                    model = load_hf(str(runner.store.get(res.records[step].outputs["model"]).local_path()))
                    got = {s: score_items(model, tok, items) for s, items in suites.items()}
                    scores.setdefault(variant, {})[seed] = got
                    row = {"variant": variant, "seed": seed, "run_s": round(wall, 1)}
                    for s, v in got.items():
                        w = wilson(sum(v), len(v))
                        row[s] = {"acc": w.value, "lo": w.lo, "hi": w.hi, "n": w.n}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
            (a, b) = list(variants)
            pairs = {}
            for s in suites:
                deltas = [(sum(scores[a][sd][s]) - sum(scores[b][sd][s])) / len(scores[a][sd][s]) for sd in seeds]
                pooled_a = [x for sd in seeds for x in scores[a][sd][s]]
                pooled_b = [x for sd in seeds for x in scores[b][sd][s]]
                pairs[s] = {"mean_delta": sum(deltas) / len(deltas), "per_seed_delta": deltas,
                            "pooled_mcnemar_p": mcnemar(pooled_b, pooled_a)}
            out["ablations"][name] = {"step": step, "a": a, "b": b, "rows": rows, "a_minus_b": pairs}
    finally:
        runner.rt.stop()
    for name, ab in out["ablations"].items():
        print(f"\n## {name}: {ab['a']} vs {ab['b']} ({len(seeds)} seeds)")
        print("| variant | seed | arithmetic EM [95% CI] | knowledge EM [95% CI] | run s |\n|---|---|---|---|---|")
        for r in ab["rows"]:
            cells = [f"{r[s]['acc']:.3f} [{r[s]['lo']:.3f}, {r[s]['hi']:.3f}]" for s in ("arithmetic", "knowledge")]
            print(f"| {r['variant']} | {r['seed']} | {cells[0]} | {cells[1]} | {r['run_s']:.0f} |")
        for s, p in ab["a_minus_b"].items():
            per = ", ".join(f"{d:+.3f}" for d in p["per_seed_delta"])
            print(f"{s}: {ab['a']} - {ab['b']} = {p['mean_delta']:+.3f} (per seed {per}; pooled McNemar p = "
                  f"{p['pooled_mcnemar_p']:.3g})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
