"""Runner overhead and cache speed: herd's flow runner vs calling the same two step functions directly.

    .venv/bin/python -m benchmarks.platform_runner [--steps-mb 8] [--repeats 3]

One run, embedded runtime in a temporary HERD_HOME (local Ray with dashboard, MLflow sqlite, local store):

- reference: the two step bodies called in-process, writing into plain temp dirs (no caching, no tracking);
- herd cold: the same steps through ``Runner.run`` (Ray tasks, MLflow nested runs, artifact commits) on a
  started Ray (Ray's own start time is reported separately);
- herd cached: ``Runner.run`` again (every step reused);
- ``herd plan`` and ``herd run`` on the cached pipeline in a fresh process (imports included): what a user waits
  for when nothing changed.

Prints one JSON object; docs/benchmarks.md "platform" records the numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import ray.cloudpickle
from pydantic import BaseModel

from herd.platform.config import RuntimeConfig
from herd.platform.runner import Resources, Runner, Step, StepContext
from herd.platform.runtime import Runtime

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class Size(BaseModel):
    mb: int = 8
    seed: int = 0


def _make(out: Path, cfg: Size) -> None:
    block = hashlib.sha256(str(cfg.seed).encode()).digest() * (1 << 15)  # 1 MiB
    with open(out / "data.bin", "wb") as f:
        f.writelines(block for _ in range(cfg.mb))


def _digest(src: Path, out: Path) -> None:
    h = hashlib.sha256((src / "data.bin").read_bytes()).hexdigest()
    (out / "digest.txt").write_text(h)


def make(ctx: StepContext) -> None:
    _make(ctx.output_dir("data", format="bin"), ctx.config)


def digest(ctx: StepContext) -> None:
    _digest(ctx.inputs["data"].local_path(), ctx.output_dir("digest", format="txt"))


def steps(cfg: Size) -> list[Step]:
    return [Step("bench.make", make, config=cfg, config_path="bench.make", outputs={"data": "dataset"},
                 resources=Resources(cpus=0.5)),
            Step("bench.digest", digest, inputs={"data": "bench.make.data"}, outputs={"digest": "report"},
                 resources=Resources(cpus=0.5))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps-mb", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="herd-bench-"))
    os.environ["HERD_HOME"] = str(home)
    res: dict[str, object] = {"steps_mb": args.steps_mb, "repeats": args.repeats}

    direct = []
    for i in range(args.repeats):
        cfg = Size(mb=args.steps_mb, seed=i)
        with tempfile.TemporaryDirectory() as a, tempfile.TemporaryDirectory() as b:
            t0 = time.perf_counter()
            _make(Path(a), cfg)
            _digest(Path(a), Path(b))
            direct.append(time.perf_counter() - t0)

    rt = Runtime(RuntimeConfig(home=str(home)))
    t0 = time.perf_counter()
    rt.start()
    res["ray_start_s"] = round(time.perf_counter() - t0, 2)
    runner = Runner(rt, progress=False)
    cold, cached = [], []
    for i in range(args.repeats):
        cfg = Size(mb=args.steps_mb, seed=100 + i)  # a new seed: nothing cached
        t0 = time.perf_counter()
        r = runner.run(steps(cfg))
        cold.append(time.perf_counter() - t0)
        assert r.executed == ["bench.make", "bench.digest"]
        t0 = time.perf_counter()
        r = runner.run(steps(cfg))
        cached.append(time.perf_counter() - t0)
        assert r.reused == ["bench.make", "bench.digest"]
    rt.stop()

    # A fresh process, as a user runs it: imports + recipe + plan/run over the cached steps.
    script = textwrap.dedent(f"""
        import sys, time; t0 = time.perf_counter()
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        from benchmarks.platform_runner import steps, Size
        from herd.platform.config import RuntimeConfig
        from herd.platform.runner import Runner
        from herd.platform.runtime import Runtime
        r = Runner(Runtime(RuntimeConfig(home={str(home)!r})), progress=False)
        res = r.run(steps(Size(mb={args.steps_mb}, seed=100)))
        assert res.reused == ["bench.make", "bench.digest"], res
        print(time.perf_counter() - t0)
    """)
    fresh = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
        fresh.append(time.perf_counter() - t0)

    med = statistics.median
    res.update({
        "direct_s": round(med(direct), 3),
        "herd_cold_s": round(med(cold), 3),
        "herd_cached_s": round(med(cached), 4),
        "fresh_process_cached_run_s": round(med(fresh), 2),
        "runner_overhead_per_step_s": round((med(cold) - med(direct)) / 2, 3),
        "cold_vs_direct": round(med(cold) / med(direct), 1),
        "cold_vs_cached": round(med(cold) / med(cached)),
    })
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
