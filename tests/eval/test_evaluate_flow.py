"""The evaluate flow end to end on a real local Ray + MLflow: steps derived from the pipeline's model roles,
metrics on each LoggedModel, the report with paired comparisons and the NIAH heatmap."""

from __future__ import annotations

import json

import pytest
from eval_fakes import fake_models
from mlflow import MlflowClient

from herd.platform.config import RuntimeConfig, load_recipe
from herd.platform.runner import Runner
from herd.platform.runtime import Runtime

SMALL = ["data.synthetic.n_entities=20", "data.synthetic.n_arithmetic_train=100", "data.synthetic.n_needle_docs=4",
         "data.synthetic.n_filler_docs=40", "data.synthetic.n_chat=40", "data.synthetic.n_images=20",
         "data.synthetic.n_arithmetic_eval=20", "data.synthetic.n_preferences=10", "data.tokenizer.vocab_size=512",
         "data.packing.seq_len=64",
         # small suites: the point here is the wiring, the suites have their own tests
         "evaluate.arithmetic.n_items=30", "evaluate.arithmetic.pass_k_items=4", "evaluate.arithmetic.samples=2",
         "evaluate.arithmetic.pass_k=[1,2]", "evaluate.perplexity_rows=4", "evaluate.knowledge_items=10",
         "evaluate.needle.length_multiples=[1,2]", "evaluate.needle.depths=[0,1]",
         "evaluate.needle.samples_per_cell=2",
         "evaluate.suites=[perplexity,knowledge,multiple_choice,arithmetic,needle,image]"]


@pytest.mark.slow
def test_evaluate_flow_every_model_by_role(ray_local, herd_home, monkeypatch) -> None:
    from herd import flows
    from herd.flows.evaluate import build

    monkeypatch.setattr(flows, "FLOWS", {"data": "herd.flows.data:build", "fake": fake_models,
                                         "evaluate": "herd.flows.evaluate:build"})
    recipe = load_recipe(None, SMALL)
    steps = [s for name in flows.FLOWS for s in flows.builder(name)(recipe)]
    names = [s.name for s in build(recipe)]
    assert names == ["evaluate.evalset", "evaluate.teacher", "evaluate.student", "evaluate.report"]

    rt = Runtime(RuntimeConfig(home=str(herd_home)))
    result = Runner(rt, progress=False).run(steps)
    store = rt.artifact_store()

    # heavy suites only on the final model (student) and its parent (teacher): here both
    res = json.loads((store.get(result.outputs["evaluate.student"]["results"]).local_path()
                      / "results.json").read_text())
    assert res["meta"]["heavy"] and res["meta"]["role"] == "student"
    assert res["suites"]["image"]["skipped"]  # text-only models: skipped with a reason
    for suite in ("perplexity", "knowledge", "multiple_choice", "arithmetic", "needle"):
        m = res["suites"][suite]["metrics"]
        assert m and all(v["lo"] <= v["value"] <= v["hi"] for v in m.values()), suite

    # metrics on the LoggedModel of each model, tied to the eval set
    client = MlflowClient(rt.tracking_uri)
    for step in ("fake.teacher", "fake.student"):
        mid = result.records[step].models["model"]
        metrics = {m.key: m for m in client.get_logged_model(mid).metrics}
        acc = metrics["multiple_choice/acc"]
        assert 0 <= acc.value <= 1 and acc.dataset_name == "herd-eval"
        assert metrics["multiple_choice/acc_lo"].value <= acc.value <= metrics["multiple_choice/acc_hi"].value
        assert "needle/acc" in metrics and "perplexity/perplexity" in metrics

    report = store.get(result.outputs["evaluate.report"]["report"]).local_path()
    summary = json.loads((report / "comparison.json").read_text())
    assert [r["role"] for r in summary["rows"]] == ["teacher", "student"]
    assert {c["suite"] for c in summary["comparisons"]} >= {"multiple_choice", "arithmetic", "perplexity"}
    assert all(c["parent"].startswith("teacher") for c in summary["comparisons"])
    assert (report / "comparison.png").stat().st_size > 5000
    assert (report / "niah_student.png").exists() and "| student |" in (report / "report.md").read_text()


def test_sampled_pass_at_k_runs_on_each_posttrained_model_and_its_parent() -> None:
    """``evaluate.arithmetic.sampled_on: posttrain`` pairs every post-training stage with its parent on sampled
    pass@1; the default keeps pass@k to the heavy models (the final one and its parent)."""
    from herd.flows import ModelOutput
    from herd.flows.evaluate import heavy_refs, sampled_refs

    chain = [ModelOutput("pretrain.model", "teacher", None), ModelOutput("distill.model", "student", "pretrain.model"),
             ModelOutput("sft.train.model", "sft", "distill.model"), ModelOutput("rl.train.model", "rl", "sft.train.model"),
             ModelOutput("dpo.train.model", "dpo", "rl.train.model"),
             ModelOutput("quantize.int4.model", "int4", "dpo.train.model")]
    heavy = heavy_refs(chain, "final")
    assert heavy == {"quantize.int4.model", "dpo.train.model"}
    assert sampled_refs(chain, heavy, "heavy") == heavy
    assert sampled_refs(chain, heavy, "posttrain") == heavy | {"distill.model", "sft.train.model", "rl.train.model"}
