"""Codistillation: dynamic alpha vs fixed alpha vs hard labels only, same tokens and compute, held-out loss.

    HERD_HOME=/tmp/bench .venv/bin/python benchmarks/train_codistill.py [--set distill.steps=200 ...]

Runs the tiny recipe's pipeline up to `distill.train` three times in one process with one runtime (data and the
pretrained teacher are built once and reused from the cache), changing only `distill.alpha.rule`
(dynamic | fixed (value 0.5) | hard). Every run sees the same rows in the same order (same seed, steps, batch)
and trains the same student; dynamic and fixed also run the frozen teacher's forward (the hard baseline skips
it, the only compute difference). Reported: the student's held-out CE on the data flow's validation split
(`distill.eval_batches` batches per rank) at the end, its train CE, mean alpha, wall time, and the teacher's
own held-out CE.
"""

from __future__ import annotations

import argparse
import time

from herd.cli import pipeline_steps
from herd.platform.config import load_recipe
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime

RULES = ("dynamic", "fixed", "hard")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="recipe override, repeatable")
    args = ap.parse_args()
    base = ["distill.eval_batches=16", *args.sets]
    rows = []
    rt = None
    try:
        for rule in RULES:
            recipe = load_recipe("tiny", [*base, f"distill.alpha.rule={rule}"])
            if rt is None:
                rt = Runtime(recipe.runtime)
            steps = pipeline_steps(recipe, ["distill"])
            runner = Runner(rt, progress=False)
            t0 = time.perf_counter()
            res = runner.run(steps, ["distill.train"], recipe_source="tiny")
            wall = time.perf_counter() - t0
            # run metadata lives in the model's manifest (the model directory holds only what the weights determine)
            student = runner.store.get(res.outputs["distill.train"]["model"]).manifest.meta["training"]
            teacher = runner.store.get(res.outputs["pretrain.train"]["model"]).manifest.meta["training"]
            s, t = student["final_metrics"], teacher["final_metrics"]
            rows.append((rule, s, t, wall, "distill.train" in res.executed))
    finally:
        if rt is not None:
            rt.stop()
    print(f"overrides: {base}")
    print("| alpha rule | student held-out CE | vs hard labels | train CE (last window) | mean alpha | "
          "wall s (distill step) | teacher held-out CE |")
    print("|---|---|---|---|---|---|---|")
    hard = next(s["eval/loss"] for r, s, *_ in rows if r == "hard")
    for rule, s, t, wall, ran in rows:
        print(f"| {rule} | {s['eval/loss']:.4f} | {s['eval/loss'] - hard:+.4f} | {s['ce']:.4f} | "
              f"{s.get('alpha', 0.0):.3f} | {wall:.0f}{'' if ran else ' (cached)'} | {t['eval/loss']:.4f} |")


if __name__ == "__main__":
    main()
