"""Evaluate pipeline models on every suite and time each model: the numbers in docs/benchmarks.md (evaluate).

    python benchmarks/eval_models.py --store $HERD_HOME/artifacts [--recipe tiny] [--threads 2] [--out bench/]

Finds the newest finished ``pretrain.train`` / ``distill.train`` (and any other role-declaring step) models and
the data flow's tasks / tokenizer / corpus / validation artifacts in the store, builds the eval set exactly as
``evaluate.evalset`` does, and runs ``herd.eval.run.evaluate_model`` on each model in this process (the evaluate
flow runs the same function in one Ray task per model). Prints one markdown table: each suite's headline score
with its 95% CI, the seconds per suite and per model, and the paired comparison of each model to its parent.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def newest_outputs(store_root: Path, step: str) -> dict[str, str] | None:
    recs = sorted((store_root / "steps" / step).glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in recs:
        outs = json.loads(p.read_text()).get("outputs")
        if outs:
            return outs
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True, help="artifact store root ($HERD_HOME/artifacts)")
    ap.add_argument("--recipe", default="tiny")
    ap.add_argument("--set", action="append", default=[], help="recipe override section.key=value")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="bench-eval")
    args = ap.parse_args()

    import torch

    from herd.eval.evalset import build_evalset
    from herd.eval.lm import HerdLM
    from herd.eval.report import ModelResults, build_report
    from herd.eval.run import evaluate_model, uses_chat
    from herd.platform.config import load_recipe
    from herd.platform.modelref import step_roles
    from herd.platform.store import ArtifactStore

    torch.set_num_threads(args.threads)
    recipe = load_recipe(args.recipe, args.set)
    cfg = recipe.evaluate
    store = ArtifactStore(args.store)
    root = Path(args.store)
    data = {**(newest_outputs(root, "data.synthetic") or {}), **(newest_outputs(root, "data.pack") or {}),
            **(newest_outputs(root, "data.tokenizer") or {})}
    clean = newest_outputs(root, "data.clean") or {}
    out = Path(args.out)
    t0 = time.perf_counter()
    counts = build_evalset(store.get(data["tasks"]).local_path(), store.get(data["tokenizer"]).local_path(),
                           out / "evalset", cfg, seq_len=recipe.data.packing.seq_len,
                           corpus_dir=store.get(clean["corpus"]).local_path() if clean else None)
    print(f"eval set {counts} in {time.perf_counter() - t0:.1f}s")
    roles = step_roles(recipe)
    models, digests = [], {}
    for ref, role in roles.items():
        step, output = ref.rsplit(".", 1)
        outs = newest_outputs(root, step)
        if not outs or output not in outs:
            continue
        art = store.get(outs[output])
        t0 = time.perf_counter()
        lm = HerdLM.load(art.local_path(), batch_size=cfg.batch_size)
        load_s = time.perf_counter() - t0
        cpu: dict[str, float] = {}
        mark = [time.process_time()]

        def on_suite(name: str, r, cpu=cpu, mark=mark) -> None:  # CPU seconds: robust to a shared, loaded box
            now = time.process_time()
            cpu[name], mark[0] = now - mark[0], now

        res = evaluate_model(lm, out / "evalset", cfg, val_dir=store.get(data["pretrain_val"]).local_path(),
                             chat=uses_chat(role), heavy=True, on_suite=on_suite)
        total = time.perf_counter() - t0
        parent = next((digests[p] for p in art.manifest.parents if p in digests), None)
        digests[art.digest] = art.digest
        models.append(ModelResults(f"{role} [{art.digest[:8]}]", role, art.digest, res, parent=parent,
                                   seconds=total))
        times = ", ".join(f"{k} {r.seconds:.1f}s wall / {cpu[k]:.1f}s cpu" for k, r in res.items() if not r.skipped)
        print(f"{role}: {lm.model.config.num_params() / 1e6:.1f}M params, load {load_s:.1f}s, {times}, total "
              f"{total:.1f}s")
    summary = build_report(models, out / "report", seq_len=recipe.data.packing.seq_len)
    print((out / "report" / "report.md").read_text())
    print(f"threads={args.threads} cpus={os.cpu_count()} load={os.getloadavg()}")
    print(json.dumps({m.role: {k: r.seconds for k, r in m.suites.items()} for m in models}))
    _ = summary


if __name__ == "__main__":
    main()
