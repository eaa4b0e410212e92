"""Chart order on MLflow's run page: sections sort by name and the ungrouped "Model metrics" comes last, charts sort by
key inside a section (MLflow 3.17's RunsChartsCardConfig.getBaseChartAndSectionConfigs; seen in Chromium by
tests/ui/test_ui_browser.py), so MoE charts must not form sections before the loss, CE and lr charts; `step` and
`tokens` are never charts."""

from __future__ import annotations

from herd.train.metrics import for_mlflow


def _sections(keys: list[str]) -> list[str]:
    """The MLflow 3.17 run page's section order for these keys (grouped ones by name, then "Model metrics")."""
    grouped = sorted({k.split("/", 1)[0] for k in keys if "/" in k})
    return grouped + (["Model metrics"] if any("/" not in k for k in keys) else [])


def test_main_charts_come_before_moe_and_axes_are_not_charts():
    loop = {"loss": 3.0, "ce": 2.9, "aux_loss": 0.01, "grad_norm": 1.0, "lr": 1e-3, "tokens_per_s": 1e4,
            "mfu": 0.02, "tokens": 1e5, "step": 30.0, "eval/loss": 3.1, "moe/layer1/load_e0": 0.5,
            "moe/layer1/load_e1": 0.5, "moe/layer1/imbalance": 1.0, "moe/layer1/entropy": 0.6}
    shown = for_mlflow(loop)
    assert "step" not in shown and "tokens" not in shown
    assert list(shown)[:4] == ["eval/loss", "loss", "ce", "lr"]
    assert shown["moe.layer1.load_e0"] == 0.5 and not any(k.startswith("moe/") for k in shown)
    assert _sections(list(shown)) == ["eval", "Model metrics"]  # no MoE section ahead of the losses
    model_metrics = sorted(k for k in shown if "/" not in k)  # alphabetical inside the section
    assert model_metrics.index("ce") < model_metrics.index("moe.layer1.entropy")
    assert model_metrics.index("loss") < model_metrics.index("moe.layer1.entropy")
    assert model_metrics.index("lr") < model_metrics.index("moe.layer1.entropy")
    assert loop["step"] == 30.0  # the loop's own dict (progress bar, plots) is untouched
