"""Evaluate pipeline models on every suite and time each model: the numbers in docs/benchmarks.md (evaluate).

    python benchmarks/eval_models.py --store $HERD_HOME/artifacts [--recipe tiny] [--threads 2] [--out bench/]
    python benchmarks/eval_models.py --store ... --roles dpo,int4 --generation static,engine   # side by side
    python benchmarks/eval_models.py --store ... --workers 2 --threads 1     # like the flow: 2 models at a time

Finds the newest finished model of every role-declaring step (teacher, student, sft, rl, dpo, int8, int4, ...)
and the data flow's tasks / tokenizer / corpus / validation artifacts in the store, builds the eval set exactly
as ``evaluate.evalset`` does, and runs ``herd.eval.run.evaluate_model`` on each model in this process, with the
evaluate flow's choice of which models get NIAH and pass@k (``evaluate.full_suites_on``: the final model and
its parent) unless ``--heavy all``. Each ``--generation`` backend (the serve engine, or the static
``herd.model.generate`` batches) runs every model, interleaved model by model so both see the same load.
Prints per model: load time, wall / CPU seconds per suite, the total; then the comparison report (scores with
95% CIs, paired tests against the parent) of the first backend, and the load average.
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
    ap.add_argument("--roles", default="", help="comma-separated roles to run (default: every model found)")
    ap.add_argument("--heavy", choices=["flow", "all"], default="flow",
                    help="NIAH + pass@k as the evaluate flow chooses (final model and parent) or on all")
    ap.add_argument("--generation", default="static", help="comma-separated: static, engine")
    ap.add_argument("--scoring", default="forward", help="comma-separated, paired with --generation: forward, engine")
    ap.add_argument("--workers", type=int, default=1,
                    help="model runs side by side in N processes (the flow: 2 Ray tasks of 1 CPU on 2 cores)")
    ap.add_argument("--out", default="bench-eval")
    args = ap.parse_args()

    import torch

    from herd.eval.evalset import build_evalset
    from herd.eval.report import ModelResults, build_report
    from herd.flows import model_outputs
    from herd.flows.evaluate import heavy_refs
    from herd.platform.config import load_recipe
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
    found = []
    for m in model_outputs(recipe, before="evaluate"):
        step, output = m.ref.rsplit(".", 1)
        outs = newest_outputs(root, step)
        if outs and output in outs:
            found.append((m, store.get(outs[output])))
    heavy = heavy_refs([m for m, _ in found], "all" if args.heavy == "all" else cfg.full_suites_on)
    wanted = set(filter(None, args.roles.split(",")))
    backends = list(zip(args.generation.split(","), (args.scoring.split(",") * 9)[:len(args.generation.split(","))],
                        strict=True))
    models: dict[tuple[str, str], list[ModelResults]] = {b: [] for b in backends}
    digests = {m.ref: art.digest for m, art in found}
    jobs = [(m.role, str(art.local_path()), art.digest, m.ref in heavy, digests.get(m.parent or ""), gen, sc)
            for m, art in found if not wanted or m.role in wanted for gen, sc in backends]
    common = (str(out / "evalset"), str(store.get(data["pretrain_val"]).local_path()), cfg, args.threads)
    loads: list[float] = []
    t_all = time.perf_counter()
    if args.workers > 1:  # like the evaluate flow: one process per model (Ray tasks of 1 CPU), N side by side
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as pool:
            done = list(pool.map(_run_one, [(*j, *common) for j in jobs]))
    else:
        done = []
        for j in jobs:
            done.append(_run_one((*j, *common)))
            loads.append(os.getloadavg()[0])
            print(done[-1][2], flush=True)
    wall_all = time.perf_counter() - t_all
    totals: dict[tuple[str, str], float] = dict.fromkeys(backends, 0.0)
    for (role, _, digest, _, parent, gen, sc), (res, total, line) in zip(jobs, done, strict=True):
        if args.workers > 1:
            print(line, flush=True)
        totals[(gen, sc)] += total
        models[(gen, sc)].append(ModelResults(f"{role} [{digest[:8]}]", role, digest, res, parent=parent,
                                              seconds=total))
    print(f"wall for all {len(jobs)} model runs ({args.workers} process(es)): {wall_all:.1f}s")
    for b, t in totals.items():
        print(f"[{b[0]}/{b[1]}] all models: {t:.1f}s")
    first = models[backends[0]]
    build_report(first, out / "report", seq_len=recipe.data.packing.seq_len, confidence=cfg.confidence,
                 seed=cfg.seed)
    print((out / "report" / "report.md").read_text())
    if len(backends) > 1:  # same answers? (greedy generation must agree; sampled pass@k need not)
        for a, b in zip(first, models[backends[1]], strict=True):
            for s, r in a.suites.items():
                if r.skipped or s not in b.suites:
                    continue
                print(f"{a.label} {s}: {backends[0]} {r.primary_score} vs {backends[1]} {b.suites[s].primary_score}")
    print(f"threads={args.threads} workers={args.workers} cpus={os.cpu_count()} "
          f"load after each model={[round(x, 1) for x in loads]} now={os.getloadavg()}")


def _run_one(job: tuple) -> tuple[dict, float, str]:
    """Load one model and run its suites (in this process or a pool worker); (results, seconds, summary line)."""
    import torch

    from herd.eval.lm import HerdLM
    from herd.eval.run import evaluate_model, uses_chat

    role, path, _digest, heavy, _parent, gen, sc, evalset, val, cfg, threads = job
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    lm = HerdLM.load(path, batch_size=cfg.batch_size, generation=gen, scoring=sc)
    load_s = time.perf_counter() - t0
    cpu: dict[str, float] = {}
    mark = [time.process_time()]

    def on_suite(name: str, r) -> None:  # CPU seconds: robust to a shared box
        now = time.process_time()
        cpu[name], mark[0] = now - mark[0], now

    res = evaluate_model(lm, evalset, cfg, val_dir=val, chat=uses_chat(role), heavy=heavy, on_suite=on_suite)
    total = time.perf_counter() - t0
    times = ", ".join(f"{k} {r.seconds:.1f}/{cpu[k]:.1f}" for k, r in res.items() if not r.skipped)
    line = (f"[{gen}/{sc}] {role}{' (NIAH + pass@k)' if heavy else ''}: {lm.model.config.num_params() / 1e6:.1f}M "
            f"params, load {load_s:.1f}s, suites wall/cpu s: {times}; total {total:.1f}s")
    return res, total, line


if __name__ == "__main__":
    main()
