"""Scores on the LoggedModel: written by the driver (model_metrics), read back by MLflow and by `herd eval show`."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from mlflow import MlflowClient

from herd.eval.cli import show_summary
from herd.eval.report import render_table
from herd.eval.result import SuiteResult
from herd.eval.stats import wilson
from herd.platform.model_metrics import attach_output_metrics, ensure_logged_model, manifest_entry


def test_metrics_land_on_the_logged_model_and_show_reads_them(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("herd")
    mids = {}
    for role, digest, k in (("teacher", "a" * 64, 30), ("student", "b" * 64, 40)):
        mids[role] = ensure_logged_model(client, exp, digest=digest, uri=f"/store/{digest}", fmt="hf-safetensors",
                                         role=role, name=f"tiny-{role}")
        r = SuiteResult("multiple_choice", {"acc": wilson(k, 100)}, primary="acc", seconds=1.5)
        metrics = {**r.mlflow_metrics(), "eval/seconds": 2.0}
        # what the evaluate step puts in its output manifest, attached by the driver
        art = SimpleNamespace(manifest=SimpleNamespace(meta={"model_metrics": [
            manifest_entry(digest, metrics, dataset="herd-eval", dataset_digest="c" * 64)]}))
        run = client.create_run(exp).info.run_id
        assert attach_output_metrics(client, exp, run, {"results": art}) == len(metrics)
    assert ensure_logged_model(client, exp, digest="a" * 64, uri="", fmt="", role="teacher", name="x") == mids["teacher"]

    got = {m.key: m for m in client.get_logged_model(mids["student"]).metrics}
    assert got["multiple_choice/acc"].value == 0.4 and got["multiple_choice/acc"].dataset_name == "herd-eval"
    assert got["multiple_choice/acc_lo"].value < 0.4 < got["multiple_choice/acc_hi"].value
    assert all("," not in k for k in got)

    summary = show_summary(SimpleNamespace(tracking_uri=uri, experiment="herd"))
    assert [r["role"] for r in summary["rows"]] == ["teacher", "student"]  # pipeline order
    cell = summary["rows"][1]["suites"]["multiple_choice"]
    assert cell["value"] == 0.4 and cell["n"] == 100
    assert render_table(summary).row_count == 2
    from rich.console import Console

    console = Console(record=True, width=200)
    console.print(render_table(summary))  # what `herd eval show` prints: model, stage, score [CI] per suite
    text = console.export_text()
    lo, hi = cell["lo"], cell["hi"]
    assert "student" in text and "teacher" in text and f"0.400 [{lo:.3f}, {hi:.3f}]" in text
