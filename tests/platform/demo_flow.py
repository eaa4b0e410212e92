"""A two-step demo flow for the runner tests (test code, not a shipped flow).

demo.make   reads a raw source file, writes a ``numbers`` dataset (config: DemoMake).
demo.train  reads ``numbers``, "trains" for ``iterations`` (sleeping ``sleep_s`` each), checkpointing its
            progress under ``ctx.checkpoint_dir`` so an interrupted run resumes; writes a ``model``.

Run as a driver script (the kill test does): ``python demo_flow.py HOME RAY_ADDRESS SOURCE [--set k=v ...]``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

import fsspec
import ray.cloudpickle
from pydantic import BaseModel, ConfigDict

from herd.platform.runner import Resources, Step, StepContext

# Ray workers cannot import this test module by name: ship its functions by value.
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class DemoMake(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    scale: int = 2


class DemoTrain(BaseModel):
    model_config = ConfigDict(extra="forbid")
    iterations: int = 3
    sleep_s: float = 0.0
    lr: float = 0.1


def make(ctx: StepContext) -> None:
    cfg: DemoMake = ctx.config
    raw = Path(cfg.source).read_bytes()
    ctx.log_source(cfg.source, hashlib.sha256(raw).hexdigest(), name="raw-numbers")
    nums = [int(x) * cfg.scale for x in raw.split()]
    out = ctx.output_dir("numbers", format="json", rows=len(nums))
    (out / "numbers.json").write_text(json.dumps(nums))
    ctx.log_metrics({"rows": len(nums)}, step=0)


def train(ctx: StepContext) -> None:
    cfg = ctx.config  # a DemoTrain, or a trainer section with `optim.lr` (the CLI tests use posttrain.rl)
    iterations, sleep_s = getattr(cfg, "iterations", 3), getattr(cfg, "sleep_s", 0.0)
    lr = cfg.lr if hasattr(cfg, "lr") else cfg.optim.lr
    nums = json.loads((ctx.inputs["numbers"].local_path() / "numbers.json").read_text())
    ckpt = f"{ctx.checkpoint_dir}/state.json"
    fs, path = fsspec.core.url_to_fs(ckpt)
    state = json.loads(fs.cat_file(path)) if fs.exists(path) else {"it": 0, "w": 0.0, "resumed_from": 0}
    state["resumed_from"] = state["it"]
    for it in range(state["it"], iterations):
        state["w"] += lr * sum(nums) / len(nums)
        state["it"] = it + 1
        time.sleep(sleep_s)
        fs.pipe_file(path, json.dumps(state).encode())  # progress a restarted step resumes from
        ctx.log_metrics({"w": state["w"]}, step=it)
    out = ctx.output_dir("model", format="json")
    (out / "weights.json").write_text(json.dumps({"w": state["w"], "iterations": iterations}))
    (out / "progress.json").write_text(json.dumps({"resumed_from": state["resumed_from"]}))


def evaluate(ctx: StepContext) -> None:
    w = json.loads((ctx.inputs["model"].local_path() / "weights.json").read_text())["w"]
    out = ctx.output_dir("report", format="json")
    (out / "report.json").write_text(json.dumps({"w": w}))
    ctx.log_metrics({"w": w})


def steps(source: str, make_cfg: dict | None = None, train_cfg: dict | None = None) -> list[Step]:
    return [
        Step("demo.make", make, config=DemoMake(source=source, **(make_cfg or {})), config_path="demo.make",
             outputs={"numbers": "dataset"}, resources=Resources(cpus=0.5)),
        Step("demo.train", train, config=DemoTrain(**(train_cfg or {})), config_path="demo.train",
             inputs={"numbers": "demo.make.numbers"}, outputs={"model": "model"},
             resources=Resources(cpus=0.5)),
    ]


def build_from_recipe(source: str):
    """A registry-style builder: demo.train reads the recipe's posttrain.rl section (its optim.lr; CLI tests)."""

    def build(recipe) -> list[Step]:
        make_step, train_step = steps(source)
        train_step.config, train_step.config_path = recipe.posttrain.rl, "posttrain.rl"
        return [make_step, train_step]

    return build


def main(argv: list[str]) -> None:
    from herd.platform.config import RuntimeConfig
    from herd.platform.runner import Runner
    from herd.platform.runtime import Runtime

    home, address, source, iterations, sleep_s = argv[:5]
    rt = Runtime(RuntimeConfig(home=home), address=address or None)
    Runner(rt, progress=True).run(steps(source, train_cfg={"iterations": int(iterations),
                                                           "sleep_s": float(sleep_s)}))
    rt.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
