"""Chart order on MLflow's run page, checked on metric keys (REST level; test_ui_browser.py sees it in Chromium).

MLflow 3.17 (RunsChartsCardConfig.getBaseChartAndSectionConfigs and extractChartSectionName, in the UI bundle under
mlflow/server/js/build) puts each metric in the section named by its key before the last "/" ("Model metrics" when
the key has none), draws the named sections first, sorted by name, then "Model metrics", and sorts the charts by key
inside a section. So a grouped key ahead of the main curves must be dotted instead (`moe.layer1.load_e0`,
`vs_parent.arithmetic.acc`, `rollout.ledger.easy`): training runs show the held-out loss, loss, CE and lr before
the MoE charts; post-training runs show RL's reward and every stage's loss before the held-out comparison with the
parent (`vs_parent.*`), the rollout diagnostics (`rollout.*`: ledger tiers, sampler/trainer log-prob gap, pass
rates) and the MoE charts. `step` and `tokens` are never charts.

    .venv/bin/python -m pytest tests/ui/test_ui_charts.py -q          # the slow test reuses `finished_pipeline`
"""

from __future__ import annotations

import pytest

from herd.train.metrics import for_mlflow

MODEL_METRICS = "Model metrics"
SIDE = ("moe.", "rollout.", "vs_parent.")  # dotted groups that must come after the main curves


def page_order(keys: list[str]) -> list[tuple[str, str]]:
    """(section, key) in the order MLflow 3.17's run page draws a run's metric charts."""
    def section(key: str) -> str:
        return key.rsplit("/", 1)[0] if "/" in key else MODEL_METRICS

    named = sorted({section(k) for k in keys} - {MODEL_METRICS})
    rank = {s: i for i, s in enumerate([*named, MODEL_METRICS])}
    # JS's default sort compares UTF-16 code units: for these ASCII keys the same order as Python's
    return sorted(((section(k), k) for k in keys), key=lambda sk: (rank[sk[0]], sk[1]))


def test_page_order_follows_mlflow():
    keys = ["loss", "vs_parent/arithmetic/acc", "rollout/pass_rate/arithmetic", "rollout/reward", "aux_loss"]
    assert page_order(keys) == [("rollout", "rollout/reward"),
                                ("rollout/pass_rate", "rollout/pass_rate/arithmetic"),
                                ("vs_parent/arithmetic", "vs_parent/arithmetic/acc"),
                                (MODEL_METRICS, "aux_loss"), (MODEL_METRICS, "loss")]


def test_main_charts_come_before_moe_and_axes_are_not_charts():
    loop = {"loss": 3.0, "ce": 2.9, "aux_loss": 0.01, "grad_norm": 1.0, "lr": 1e-3, "tokens_per_s": 1e4,
            "mfu": 0.02, "tokens": 1e5, "step": 30.0, "eval/loss": 3.1, "moe/layer1/load_e0": 0.5,
            "moe/layer1/load_e1": 0.5, "moe/layer1/imbalance": 1.0, "moe/layer1/entropy": 0.6}
    shown = for_mlflow(loop)
    assert "step" not in shown and "tokens" not in shown
    assert list(shown)[:4] == ["eval/loss", "loss", "ce", "lr"]
    assert shown["moe.layer1.load_e0"] == 0.5 and not any(k.startswith("moe/") for k in shown)
    order = [k for _, k in page_order(list(shown))]
    assert order[0] == "eval/loss"
    assert {s for s, _ in page_order(list(shown))} == {"eval", MODEL_METRICS}  # no MoE section ahead of the losses
    first_moe = next(i for i, k in enumerate(order) if k.startswith("moe."))
    assert all(order.index(k) < first_moe for k in ("loss", "ce", "lr")), order
    assert loop["step"] == 30.0  # the loop's own dict (progress bar, plots) is untouched


@pytest.mark.slow  # reuses the session's finished pipeline (tests/conftest.py); the check itself takes a second
def test_post_training_runs_show_the_loss_and_reward_first(finished_pipeline):
    """sft.train, rl.train and dpo.train as MLflow holds them: the objective's loss (and RL's reward, its page's
    first chart) ahead of every side chart; the only named section is RL's reward."""
    from mlflow import MlflowClient

    client = MlflowClient(finished_pipeline.tracking_uri)
    for step in ("sft.train", "rl.train", "dpo.train"):
        keys = list(client.get_run(finished_pipeline.result.records[step].run_id).data.metrics)
        order = [k for _, k in page_order(keys)]
        sections = list(dict.fromkeys(s for s, _ in page_order(keys)))
        side = [i for i, k in enumerate(order) if k.startswith(SIDE)]
        assert any(k.startswith("vs_parent.arithmetic.") for k in order), (step, order)
        assert any(k.startswith("moe.") for k in order), (step, order)
        assert order.index("loss") < min(side), (step, order)
        assert "step" not in order and "tokens" not in order, (step, order)
        if step == "rl.train":
            assert sections == ["rollout", MODEL_METRICS], sections
            assert order[0] == "rollout/reward", order
            for prefix in ("rollout.ledger.", "rollout.logp_gap.", "rollout.pass_rate."):
                assert any(k.startswith(prefix) for k in order), (prefix, order)
        else:
            assert sections == [MODEL_METRICS], (step, sections)
    # the rl flow run's summary repeats the reward beside the loss (herd.platform.mlflow_views.HEADLINE)
    flow = client.get_run(finished_pipeline.result.flow_runs["rl"]).data.metrics
    assert {"train/loss", "train/rollout/reward"} <= set(flow), sorted(flow)
