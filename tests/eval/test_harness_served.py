"""The lm-eval cross-check through herd's served endpoint: `herd eval MODEL --harness URL` on a pipeline model
(the finished test pipeline's teacher) deployed on Ray Serve with herd's engine. herd's own multiple-choice
accuracy and lm-eval's ``local-completions`` accuracy on the same eval-set items agree within herd's interval,
and both land on the same MLflow LoggedModel (lm-eval's under ``harness/``).

    .venv/bin/python -m pytest tests/eval/test_harness_served.py -q -s     # prints the two accuracies
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.serve.conftest import deploy_served

pytestmark = pytest.mark.slow


def test_herd_eval_harness_through_the_served_endpoint_agrees(ray_local, finished_pipeline, herd_home) -> None:
    pytest.importorskip("lm_eval")
    from herd.eval.cli import eval_inputs, eval_model
    from herd.platform.config import load_recipe
    from herd.platform.runtime import Runtime
    from herd.platform.store import ArtifactStore

    # a fresh HERD_HOME (the pipeline's MLflow stays read-only): the checkpoint is imported as an `external`
    # model, the data flow and eval set are built here; only multiple choice runs in herd (lm-eval's task is MC).
    # The eval set first: Ray Data's packing actors need both CPUs, which a live Serve replica would not leave.
    recipe = load_recipe("test", [f"runtime.home={herd_home}", "evaluate.suites=[multiple_choice]"])
    rt = Runtime(recipe.runtime)
    eval_inputs(recipe, rt)
    # the pipeline's teacher (a base model: completion prompts on both sides) behind herd's engine on Ray Serve
    digest = finished_pipeline.result.records["pretrain.train"].outputs["model"]
    art = ArtifactStore(finished_pipeline.store).get(digest)
    deployment = deploy_served(ray_local, (Path(art.local_path()), digest), "herd", app="evalharness",
                               num_cpus=0.5)
    served = next(deployment)
    try:
        out = eval_model(str(served.ckpt), recipe, rt, harness_url=served.url, harness_model=served.model,
                         harness_tasks=["herd_mc"], say=print)
    finally:
        deployment.close()  # deletes the app and stops Serve (deploy_served's teardown)

    model = MlflowClient(rt.tracking_uri).get_logged_model(out["model_id"])
    m = {x.key: x.value for x in model.metrics}
    ours, lo, hi = m["multiple_choice/acc"], m["multiple_choice/acc_lo"], m["multiple_choice/acc_hi"]
    theirs, theirs_norm = m["harness/herd_mc/acc"], m["harness/herd_mc/acc_norm"]
    print(f"herd MC acc {ours:.3f} [{lo:.3f}, {hi:.3f}] acc_norm {m['multiple_choice/acc_norm']:.3f}; "
          f"lm-eval local-completions via {served.url}: acc {theirs:.3f} acc_norm {theirs_norm:.3f} "
          f"(n={int(m['multiple_choice/acc_n'])})")
    assert lo <= theirs <= hi
    assert m["multiple_choice/acc_norm_lo"] <= theirs_norm <= m["multiple_choice/acc_norm_hi"]
    assert out["harness"]["harness/herd_mc/acc"] == theirs  # what `herd eval` printed is what MLflow holds
