"""The quantize flow in the pipeline: int8 and int4 variants of the final model, gated, registered as LoggedModels
whose lineage names the parent model and the calibration data, and runnable by herd's packed runtime."""

from __future__ import annotations

import json

import pytest

from herd.flows import FLOWS
from herd.flows.quantize import build, final_model
from herd.platform.config import load_recipe


def test_build_targets_the_final_model_and_keys_each_scheme_alone() -> None:
    recipe = load_recipe("tiny")
    role, parent = final_model(recipe)
    steps = build(recipe)
    assert [s.name for s in steps] == ["quantize.int8", "quantize.int4"]
    assert all(s.inputs["parent"] == parent and s.inputs["val"] == "data.pack.pretrain_val"
               and s.inputs["calibration"] == "data.pack.pretrain" for s in steps)
    # the gate's mini-eval reads the evaluate flow's eval set (the same items evaluate scores)
    assert all(s.inputs["evalset"] == "evaluate.evalset.evalset" for s in steps)
    assert "evalset" not in build(load_recipe("tiny", ["quantize.eval_items=0"]))[0].inputs
    assert [s.roles["model"] for s in steps] == ["int8", "int4"]
    # changing int4's group size re-keys only the int4 step
    other = load_recipe("tiny", ["quantize.schemes=[{scheme: int8}, {scheme: int4, method: gptq, group_size: 64}]"])
    a, b = [s.config_json() for s in steps], [s.config_json() for s in build(other)]
    assert a[0] == b[0] and a[1] != b[1]
    assert role in ("student", "sft", "rl", "dpo")


@pytest.mark.slow
# checked before the (minutes-long) finished_pipeline fixture runs; registration is one line in herd/flows/__init__.py
@pytest.mark.skipif("quantize" not in FLOWS, reason="the quantize flow is not registered in herd/flows/__init__.py")
def test_flow_registers_gated_int8_and_int4(finished_pipeline) -> None:
    from mlflow import MlflowClient

    from herd.model.generate import SamplingParams, generate
    from herd.platform.store import ArtifactStore
    from herd.quantize.modules import PackedExperts, load_quantized

    recs = finished_pipeline.result.records
    _, parent_ref = final_model(finished_pipeline.recipe)
    parent = recs[parent_ref.rsplit(".", 1)[0]]
    store = ArtifactStore(finished_pipeline.store)
    client = MlflowClient(finished_pipeline.tracking_uri)
    for scheme in ("int8", "int4"):
        rec = recs[f"quantize.{scheme}"]
        assert rec.inputs["parent"] == parent.outputs["model"]
        path = store.get(rec.outputs["model"]).local_path()
        report = json.loads((path / "quantize.json").read_text())
        assert report["gate"] == "passed" and report["metrics"]["kl"] <= report["thresholds"]["max_kl"]
        assert report["calibration"]["rows"] >= 1 and report["calibration"]["heldout_tokens"] > 0
        cfg = json.loads((path / "config.json").read_text())["quantization_config"]
        assert cfg["config_groups"]["group_0"]["weights"]["num_bits"] == (8 if scheme == "int8" else 4)
        model = load_quantized(path)
        assert any(isinstance(m, PackedExperts) for m in model.modules())
        out = generate(model, [[0, 20, 21, 22]], SamplingParams(max_new_tokens=4, stop_tokens=[]))
        assert len(out[0].tokens) == 4
        # MLflow: gate metrics on the step run that made the LoggedModel, whose inputs are parent + calibration
        run = client.get_run(rec.run_id)
        assert "gate/kl" in run.data.metrics and "gate/top1" in run.data.metrics
        assert parent.models["model"] in {mi.model_id for mi in run.inputs.model_inputs}
        names = {d.dataset.name for d in run.inputs.dataset_inputs}
        assert any("pretrain_val" in n for n in names) and len(names) >= 2  # held-out + calibration data
        # ... and on the quantized LoggedModel itself (logged with its model_id): the model page shows the gate's
        # KL, top-1, per-suite and pooled mini-eval scores; its lineage names the parent and the calibration data
        lm = client.get_logged_model(rec.models["model"])
        assert lm.source_run_id == rec.run_id
        on_model = {m.key: m.value for m in lm.metrics if m.model_id == lm.model_id}
        for key in ("gate/kl", "gate/top1", "gate/retention", "gate/retention_lo", "gate/mc/parent_score",
                    "gate/mc/variant_score", "gate/arith/parent_score", "gate/arith/variant_score"):
            assert key in on_model, f"{key} missing from LoggedModel {lm.model_id} ({sorted(on_model)})"
        assert on_model["gate/kl"] == pytest.approx(report["metrics"]["kl"])
        assert on_model["gate/items"] == report["metrics"]["mc/items"] + report["metrics"]["arith/items"] > 0
        assert lm.tags["herd.parent"] == parent.models["model"]
        assert lm.params["calibration"] == rec.inputs["calibration"][:12]
        assert lm.params["evalset"] == rec.inputs["evalset"][:12]
        assert rec.inputs["evalset"] == recs["evaluate.evalset"].outputs["evalset"]
