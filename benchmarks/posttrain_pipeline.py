"""Post-training eval table: teacher, student, SFT, RL and DPO on the same held-out items, each stage paired with
its parent (exact McNemar), plus each stage's wall time.

    HERD_HOME=.herd .venv/bin/python benchmarks/posttrain_pipeline.py                   # tiny, after `herd run`
    HERD_HOME=/tmp/h .venv/bin/python benchmarks/posttrain_pipeline.py --recipe tiny --set posttrain.sft.steps=50
    ... --json out.json

It runs the pipeline up to dpo through herd's Runner (every cached step is reused; missing ones run, and their
time is what a fresh run costs), then scores every model greedily on `arithmetic_eval` and `knowledge_eval`
(all items, or --limit) with herd.posttrain.measure: accuracy with a 95% Wilson interval, and for each stage
the delta to its parent with the exact McNemar p-value on the same items. Stage times come from the steps'
MLflow runs (start to end).
"""

from __future__ import annotations

import argparse
import json
import sys

CHAIN = [("teacher", "pretrain.train", None), ("student", "distill.train", None),
         ("sft", "sft.train", "student"), ("rl", "rl.train", "sft"), ("dpo", "dpo.train", "rl")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--set", action="append", default=[], dest="overrides")
    ap.add_argument("--limit", type=int, default=1000, help="items per suite")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from herd.cli import pipeline_steps
    from herd.eval.stats import mcnemar, wilson
    from herd.model import load_hf
    from herd.platform.config import RuntimeConfig, load_recipe
    from herd.platform.runner import Runner
    from herd.platform.runtime import Runtime
    from herd.posttrain.measure import eval_prompts, score_items
    from herd.posttrain.stage import _tasks, load_tokenizer

    recipe = load_recipe(args.recipe, args.overrides)
    runner = Runner(Runtime(RuntimeConfig()), progress=True)
    try:
        res = runner.run(pipeline_steps(recipe, ["dpo"]), ["dpo.train"])
        client = MlflowClient(runner.rt.tracking_uri)
        tasks = runner.store.get(res.outputs["data.synthetic"]["tasks"]).local_path()
        tok = load_tokenizer(runner.store.get(res.outputs["data.tokenizer"]["tokenizer"]).local_path())
        suites = {"arithmetic": eval_prompts(_tasks(tasks, "arithmetic_eval"), "arithmetic", args.limit),
                  "knowledge": eval_prompts(_tasks(tasks, "knowledge_eval"), "knowledge", args.limit)}
        scores: dict[str, dict[str, list[int]]] = {}
        rows = []
        for role, step, parent in CHAIN:
            rec = res.records[step]
            model = load_hf(str(runner.store.get(rec.outputs["model"]).local_path()))
            scores[role] = {name: score_items(model, tok, items) for name, items in suites.items()}
            info = client.get_run(rec.run_id).info
            row = {"model": role, "step": step, "seconds": (info.end_time - info.start_time) / 1000
                   if info.end_time else None}
            for name, s in scores[role].items():
                w = wilson(sum(s), len(s))
                row[name] = {"acc": w.value, "lo": w.lo, "hi": w.hi, "n": w.n}
                if parent is not None:
                    row[name]["delta_vs_parent"] = w.value - sum(scores[parent][name]) / len(s)
                    row[name]["mcnemar_p"] = mcnemar(scores[parent][name], s)
            rows.append(row)
    finally:
        runner.rt.stop()
    print(f"{'model':8} {'stage time':>10}  {'arithmetic EM [95% CI]':28} {'vs parent (p)':18} "
          f"{'knowledge EM [95% CI]':28} {'vs parent (p)':18}")
    for r in rows:
        cells = []
        for name in ("arithmetic", "knowledge"):
            c = r[name]
            cells.append(f"{c['acc']:.3f} [{c['lo']:.3f}, {c['hi']:.3f}] n={c['n']}".ljust(28))
            cells.append((f"{c['delta_vs_parent']:+.3f} (p={c['mcnemar_p']:.3g})" if "mcnemar_p" in c else "")
                         .ljust(18))
        t = f"{r['seconds']:.0f}s" if r["seconds"] is not None else "?"
        print(f"{r['model']:8} {t:>10}  " + " ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"recipe": args.recipe, "overrides": args.overrides, "rows": rows}, f, indent=1)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
