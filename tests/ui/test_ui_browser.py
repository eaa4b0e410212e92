"""`herd ui` in a real browser: headless Chromium from Debian's packages (/usr/bin/chromium), driven by Playwright's
Python package (no browser download), on the finished test-sized pipeline (tests/conftest.py `finished_pipeline`).

Checks what a user looks for: the link `herd ui` prints opens the runs (not MLflow's GenAI overview); the
student's model page shows metrics, params, a dataset and its parent; the Model Registry lists the role models;
a training run's charts show the held-out loss, loss, CE and lr before the MoE charts, and no `step` / `tokens`
charts; an RL run's charts show the reward, then the loss before the rollout, vs-parent and MoE charts;
a training run's plot renders although `herd ui` was started outside HERD_HOME. Screenshots are kept under the
directory the test prints ($HERD_TEST_ARTIFACTS/ui-screenshots when set). `.ci/run` installs chromium.

    .venv/bin/python -m pytest tests/ui -x -q -s
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

# slow; the timeout covers the first test's share of `finished_pipeline` (the whole pipeline, once per session)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = os.environ.get("HERD_TEST_ARTIFACTS")
    d = Path(root) / "ui-screenshots" if root else tmp_path_factory.mktemp("ui-screenshots")
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {d}")
    return d


@pytest.fixture(scope="module")
def home(request: pytest.FixtureRequest) -> Path:
    """The finished pipeline's HERD_HOME; HERD_UI_TEST_HOME names an existing one instead (a `herd run --recipe
    test` or `herd flow distill --recipe test` home), to check the UI without re-running the pipeline."""
    given = os.environ.get("HERD_UI_TEST_HOME")
    return Path(given) if given else request.getfixturevalue("finished_pipeline").home


@pytest.fixture(scope="module")
def mlflow(home: Path):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    return client, client.get_experiment_by_name("herd").experiment_id


def _model(mlflow, name: str):
    client, exp = mlflow
    found = client.search_logged_models([exp], filter_string=f"name = '{name}'")
    assert found, f"no LoggedModel {name} in the finished pipeline"
    return found[0]


@pytest.fixture(scope="module")
def ui(home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """`herd ui` started in a directory that is not HERD_HOME; yields the links it printed."""
    port = _free_port()
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    herd = str(Path(sys.executable).parent / "herd")
    env = dict(os.environ, HERD_HOME=str(home))
    log = elsewhere / "ui.log"
    with open(log, "wb") as f:
        proc = subprocess.Popen([herd, "ui", "--port", str(port), "--recipe", "test"], cwd=elsewhere, stdout=f,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"herd ui did not come up: {log.read_text()}") from None
                time.sleep(0.5)
        text = log.read_text()
        runs = re.search(r"MLflow UI for \S+: (\S+)", text)
        registry = re.search(r"Model Registry: (\S+)", text)
        assert runs and registry, text
        assert not (elsewhere / "mlartifacts").exists()
        yield {"runs": runs.group(1), "registry": registry.group(1), "base": f"http://127.0.0.1:{port}"}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def page():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="herd-chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport={"width": 1440, "height": 1000})
        pg = ctx.new_page()
        pg.set_default_timeout(60_000)
        yield pg
        ctx.close()


def _text(page) -> str:
    return page.inner_text("body")


def _wait_text(page, *needles: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while True:
        body = _text(page)
        if all(n in body for n in needles) or time.monotonic() > deadline:
            return body
        page.wait_for_timeout(500)


def test_printed_link_shows_the_runs(ui, page, shots, mlflow):
    assert "workflowType=machine_learning" in ui["runs"]
    page.goto(ui["runs"])
    body = _wait_text(page, "data", "pretrain", "distill", "matching runs")
    page.screenshot(path=str(shots / "01-runs.png"), full_page=True)
    assert "Token Usage" not in body and "matching runs" in body  # the runs table, not the GenAI overview
    client, exp = mlflow
    flows = {r.data.tags["herd.flow"] for r in client.search_runs([exp], "tags.`herd.kind` = 'flow'")}
    assert {"data", "pretrain", "distill"} <= flows
    for flow in flows:
        assert flow in body


def test_student_model_page_shows_metrics_params_dataset_and_parent(ui, page, shots, mlflow):
    student, teacher = _model(mlflow, "test-student"), _model(mlflow, "test-teacher")
    exp = mlflow[1]
    page.goto(f"{ui['base']}/#/experiments/{exp}/models/{student.model_id}")
    body = _wait_text(page, "test-student", "eval/loss", "data.pack.pretrain", "test-teacher", "active_params")
    page.screenshot(path=str(shots / "02-student-model.png"), full_page=True)
    assert "No metrics recorded" not in body and "eval/loss" in body
    assert "No parameters recorded" not in body and "active_params" in body
    assert "data.pack.pretrain" in body  # Datasets used
    assert "test-teacher" in body  # its parent, named by role
    href = page.get_by_role("link", name="test-teacher").first.get_attribute("href")
    assert teacher.model_id in href  # the parent link leads to the teacher's page; follow it on this server
    page.goto(f"{ui['base']}/#/experiments/{exp}/models/{re.search(r'm-[0-9a-f]+', href).group(0)}")
    body = _wait_text(page, "Made from it", "test-student")
    page.screenshot(path=str(shots / "03-teacher-model.png"), full_page=True)
    assert "Made from it" in body and "test-student" in body  # and the teacher's page lists the student


def test_registry_lists_the_role_models(ui, page, shots):
    page.goto(ui["registry"])
    body = _wait_text(page, "test-teacher", "test-student")
    page.screenshot(path=str(shots / "04-registry.png"), full_page=True)
    assert "test-teacher" in body and "test-student" in body and "newest" in body


def test_plots_render_outside_herd_home(ui, page, shots, mlflow):
    client, exp = mlflow
    (run,) = client.search_runs([exp], "tags.`herd.step` = 'pretrain.train' and attributes.status = 'FINISHED'",
                                max_results=1)
    page.goto(f"{ui['base']}/#/experiments/{exp}/runs/{run.info.run_id}/artifacts/plots/loss_curve.png")
    page.wait_for_selector("img", timeout=60_000)
    deadline = time.monotonic() + 60
    widths: list[int] = []
    while time.monotonic() < deadline:
        widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
        if widths and max(widths) > 300:
            break
        page.wait_for_timeout(500)
    page.screenshot(path=str(shots / "05-plot.png"), full_page=True)
    assert widths and max(widths) > 300, widths  # the PNG loaded (a broken image has naturalWidth 0)


def _chart_legends(ui, page, mlflow, step: str, shot, *wait_for: str) -> list[str]:
    """The metric of each chart on the newest finished `step` run's page, in the order MLflow draws them (each
    chart's legend names its metric), once the charts `wait_for` are drawn; screenshot at `shot`."""
    client, exp = mlflow
    (run,) = client.search_runs([exp], f"tags.`herd.step` = '{step}' and attributes.status = 'FINISHED'",
                                max_results=1)
    page.set_viewport_size({"width": 1440, "height": 4000})  # MLflow renders only the charts in view
    try:
        page.goto(f"{ui['base']}/#/experiments/{exp}/runs/{run.info.run_id}/model-metrics")
        body = _wait_text(page, *(f"{step} ({k})" for k in wait_for))
        page.screenshot(path=str(shot), full_page=True)
    finally:
        page.set_viewport_size({"width": 1440, "height": 1000})
    return re.findall(re.escape(step) + r" \(([^)\n]+)\)", body)


def test_training_charts_show_the_losses_before_the_moe_charts(ui, page, shots, mlflow):
    """MLflow 3.17 draws a run's charts in sections: named ones (the key's part before the last "/") sorted by
    name, then "Model metrics"; charts sorted by key inside (RunsChartsCardConfig.getBaseChartAndSectionConfigs).
    herd.train.metrics.for_mlflow names the keys so the losses come first; checked here as a user sees it."""
    charts = _chart_legends(ui, page, mlflow, "pretrain.train", shots / "06-training-charts.png",
                            "moe.layer1.entropy", "lr")
    assert charts[0] == "eval/loss", charts
    first_moe = next(i for i, k in enumerate(charts) if k.startswith("moe"))
    assert all(charts.index(k) < first_moe for k in ("loss", "ce", "lr")), charts
    assert "step" not in charts and "tokens" not in charts, charts


def test_rl_run_shows_the_reward_and_loss_before_the_side_charts(ui, page, shots, mlflow):
    """A post-training run as a user sees it: RL's reward is the first chart and the loss comes before the rollout
    diagnostics, the held-out comparison with the parent and the MoE charts (their keys are dotted:
    tests/ui/test_ui_charts.py checks every post-training run's keys through the REST API)."""
    charts = _chart_legends(ui, page, mlflow, "rl.train", shots / "07-rl-charts.png",
                            "rollout/reward", "loss", "moe.layer1.entropy")
    assert charts and charts[0] == "rollout/reward", charts
    side = [i for i, k in enumerate(charts) if k.startswith(("moe.", "rollout.", "vs_parent."))]
    assert side and charts.index("loss") < min(side), charts
