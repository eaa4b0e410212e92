"""Cache keys and `herd plan` reasons, and DAG validation (no Ray needed)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

import herd
from herd.platform import cache
from herd.platform.errors import FlowError
from herd.platform.runner import Step, order_steps
from herd.platform.store import ArtifactStore


class Cfg(BaseModel):
    lr: float = 0.1
    sub: dict = {"a": 1}


def fn_a(ctx) -> None:
    ctx.output_dir("out")


def fn_b(ctx) -> None:  # different source: a code change
    ctx.output_dir("out")
    ctx.log_metrics({"done": 1})


def step(fn=fn_a, cfg=None, outputs=None) -> Step:
    return Step("f.s", fn, config=cfg or Cfg(), config_path="f.s", inputs={"x": "f.up.data"},
                outputs=outputs or {"out": "dataset"})


def finish(store: ArtifactStore, s: Step, inputs: dict[str, str]) -> cache.StepRecord:
    rec = cache.components(s, inputs)
    rec.outputs, rec.run_id = {}, "run-1"
    cache.save_record(store, rec)
    return rec


def test_key_components_and_reasons(tmp_path, monkeypatch):
    store = ArtifactStore(tmp_path)
    d1, d2 = "1" * 64, "2" * 64
    first = cache.components(step(), {"x": d1})
    assert cache.explain(store, first) == ["never ran"]
    finish(store, step(), {"x": d1})
    same = cache.components(step(), {"x": d1})
    assert same.key == first.key and cache.cached(store, same) is not None

    changed = cache.components(step(cfg=Cfg(lr=0.5, sub={"a": 2, "b": 3})), {"x": d1})
    assert changed.key != first.key
    assert cache.explain(store, changed) == ["config f.s.lr: 0.1 -> 0.5", "config f.s.sub.a: 1 -> 2",
                                             "config f.s.sub.b: <unset> -> 3"]
    new_input = cache.components(step(), {"x": d2})
    assert cache.explain(store, new_input) == ["input x changed: 111111111111 -> 222222222222"]
    assert cache.explain(store, cache.components(step(fn=fn_b), {"x": d1})) == [
        "code changed: the step function"]
    outs = cache.components(step(outputs={"out": "dataset", "extra": "report"}), {"x": d1})
    assert outs.key != first.key and cache.explain(store, outs)[0].startswith("declared outputs changed")
    monkeypatch.setattr(herd, "__version__", "9.9.9")
    bumped = cache.components(step(), {"x": d1})
    assert bumped.key != first.key and cache.explain(store, bumped) == [f"herd version {first.version} -> 9.9.9"]


def test_cached_needs_its_outputs_in_the_store(tmp_path):
    store = ArtifactStore(tmp_path)
    rec = cache.components(step(), {"x": "1" * 64})
    rec.outputs = {"out": "3" * 64}  # never committed
    cache.save_record(store, rec)
    assert cache.cached(store, cache.components(step(), {"x": "1" * 64})) is None
    assert "outputs are missing" in cache.explain(store, rec)[0]


def test_declared_code_modules_are_hashed():
    with_mod = Step("f.s", fn_a, outputs={"out": "dataset"}, code=["herd.platform.store"])
    assert cache.code_hash(with_mod) != cache.code_hash(Step("f.s", fn_a, outputs={"out": "dataset"}))
    with pytest.raises(FlowError, match="code module 'herd.nope' was not found"):
        cache.code_hash(Step("f.s", fn_a, code=["herd.nope"]))


def test_dag_validation():
    up = Step("f.up", fn_a, outputs={"data": "dataset"})
    down = Step("f.s", fn_a, inputs={"x": "f.up.data"}, outputs={"out": "model"})
    assert [s.name for s in order_steps([down, up])] == ["f.up", "f.s"]
    with pytest.raises(FlowError, match="two steps are named 'f.up'"):
        order_steps([up, up])
    with pytest.raises(FlowError, match="names no step"):
        order_steps([down])
    with pytest.raises(FlowError, match="has no output 'nope'"):
        order_steps([up, Step("f.t", fn_a, inputs={"x": "f.up.nope"})])
    a = Step("f.a", fn_a, inputs={"x": "f.b.o"}, outputs={"o": "file"})
    b = Step("f.b", fn_a, inputs={"x": "f.a.o"}, outputs={"o": "file"})
    with pytest.raises(FlowError, match="cycle"):
        order_steps([a, b])
    with pytest.raises(FlowError, match="unknown step 'f.zz'"):
        order_steps([up], ["f.zz"])
    for bad in ("nodot", "a.b.c", ".x"):
        with pytest.raises(FlowError, match="must be '<flow>.<step>'"):
            Step(bad, fn_a)
    with pytest.raises(FlowError, match="has kind 'blob'"):
        Step("f.x", fn_a, outputs={"o": "blob"})
    with pytest.raises(FlowError, match="must be '<flow>.<step>.<output>'"):
        Step("f.x", fn_a, inputs={"i": "up.data"})


def test_code_closure_follows_what_each_stage_runs():
    """A stage's key covers the libraries it runs and no later stage's: editing post-training, evaluation or
    quantization never retrains the teacher, while the steps that do run that code re-run."""
    from herd.cli import pipeline_steps
    from herd.platform.config import load_recipe

    libs = {s.name: {".".join(m.split(".")[:2]) for m in cache.code_closure(s) if m.startswith("herd.")}
            for s in pipeline_steps(load_recipe("tiny"))}
    for early in ("pretrain.train", "distill.train"):
        assert {"herd.train", "herd.model", "herd.data"} <= libs[early]
        assert not libs[early] & {"herd.posttrain", "herd.eval", "herd.quantize", "herd.serve"}, libs[early]
    for post in ("sft.judge", "sft.train", "rl.train", "dpo.train"):
        assert {"herd.posttrain", "herd.train"} <= libs[post]
    assert "herd.quantize" in libs["quantize.int8"] and "herd.quantize" in libs["evaluate.int8"]
    assert "herd.serve" in libs["deploy.serve"]


def test_judge_key_holds_only_what_the_judge_reads():
    """Changing SFT's steps or seed, or RL's training knobs, reuses the judged SFT data and the seeded ledger; what
    the judge reads (what it keeps, the RL pool, the tiers) still re-runs it."""
    from herd.cli import pipeline_steps
    from herd.platform.config import load_recipe

    def judge_config(*overrides: str) -> dict:
        step = next(s for s in pipeline_steps(load_recipe("tiny", list(overrides))) if s.name == "sft.judge")
        return step.config_json()

    base = judge_config()
    for same in ("posttrain.sft.steps=70", "posttrain.sft.seed=3", "posttrain.rl.steps=15", "posttrain.rl.seed=2",
                 "posttrain.rl.optim.lr=1e-5", "posttrain.rl.curriculum=false"):
        assert judge_config(same) == base, same
    for changed in ("posttrain.sft.easy_fraction=0.0", "posttrain.rl.tiers.hard_below=0.2", "posttrain.judge.k=3"):
        assert judge_config(changed) != base, changed
