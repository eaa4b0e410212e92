"""The OpenAI API through herd's continuous-batching engine (``server_cls``) behind herd's ingress: the same
cases as vLLM's (API key off here), plus the API key on a second app, overload shedding, several models in one
app, and lm-eval's ``local-completions`` scoring a task against the endpoint.

    .venv/bin/python -m pytest tests/serve/test_serve_herd.py -q
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.api_cases import *  # the shared API cases run against this module's deployment
from tests.serve.api_cases import Served
from tests.serve.conftest import deploy_served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_local, tiny_model):
    from herd.serve.config import LimitsConfig

    # small limits so the overload test can shed: 8 running + 24 queued per caller, more get a 503. The queue
    # leaves room for the load test's 16 clients twice over: a finished stream counts as ongoing on the
    # replica until its last batched chunk is flushed (up to 250 ms), while its client already sent the next
    yield from deploy_served(ray_local, tiny_model, "herd", num_cpus=0.5, max_ongoing_requests=8,
                             limits=LimitsConfig(max_queued_requests=24))


def test_api_key_off_serves_without_key(served: Served) -> None:
    assert served.client(key=None).models.list().data[0].id == served.model


def test_lm_eval_local_completions_scores_a_task(served: Served, tmp_path: Path) -> None:
    """lm-eval 0.4.13 `local-completions` (remote tokenizer through /tokenizer_info + /tokenize) on a local task."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    docs = [{"question": f"{a} + {b} =", "choices": [str(a + b), str(a + b + 1), str(a * b + 3)], "gold": 0}
            for a, b in [(1, 2), (3, 4), (2, 2), (5, 1), (4, 3), (6, 2)]]
    data = tmp_path / "arith.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tmp_path / "herd_serve_arith.yaml").write_text(
        "task: herd_serve_arith\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: '{{question}}'\n"
        "doc_to_choice: '{{choices}}'\ndoc_to_target: gold\nmetric_list:\n  - metric: acc\n")
    res = lm_eval.simple_evaluate(
        model="local-completions",
        model_args=f"model={served.model},base_url={served.url}/completions,num_concurrent=1,max_retries=1,"
                   "tokenized_requests=True",
        tasks=["herd_serve_arith"], task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        batch_size=2, limit=None)
    scores = res["results"]["herd_serve_arith"]
    assert 0.0 <= scores["acc,none"] <= 1.0 and scores["acc_stderr,none"] >= 0.0
    assert res["n-samples"]["herd_serve_arith"]["effective"] == len(docs)


def test_bounded_load_no_errors_and_still_answers(served: Served) -> None:
    """16 clients x 4 streaming requests (self-stopping): 0 errors, then the endpoint still answers."""
    client = openai.AsyncOpenAI(base_url=served.url, api_key="none", max_retries=0, timeout=300)

    async def worker(i: int) -> int:
        n = 0
        for j in range(4):
            stream = await client.completions.create(model=served.model, prompt=f"load {i} {j}", max_tokens=8,
                                                     temperature=0.7, seed=i * 10 + j, stream=True)
            async for _ in stream:
                n += 1
        return n

    async def main() -> list[int]:
        return await asyncio.gather(*(worker(i) for i in range(16)))

    counts = asyncio.run(main())
    assert len(counts) == 16 and all(c > 0 for c in counts)
    assert httpx.get(f"{served.root}/health", timeout=30).json()["status"] == "ok"


def test_overload_sheds_503_in_openai_shape(served: Served) -> None:
    """60 concurrent long requests against 8 running + 24 queued: the rest get 503 with OpenAI's error JSON and
    Retry-After (never a 500, never a hang), the accepted ones finish, and the endpoint answers afterwards."""
    body = {"model": served.model, "prompt": "overload", "max_tokens": 200, "temperature": 0, "ignore_eos": True}

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=300) as c:
            return await asyncio.gather(*(c.post(f"{served.url}/completions", json=body) for _ in range(60)))

    rs = asyncio.run(main())
    codes = sorted(r.status_code for r in rs)
    assert set(codes) == {200, 503} and codes.count(200) >= 8, codes
    shed = next(r for r in rs if r.status_code == 503)
    err = shed.json()["error"]
    assert err["code"] == "overloaded" and err["type"] and "retry" in err["message"], err
    assert int(shed.headers["retry-after"]) >= 1
    ok = next(r for r in rs if r.status_code == 200).json()
    assert ok["usage"]["completion_tokens"] == 200
    assert httpx.get(f"{served.root}/health", timeout=30).json()["status"] == "ok"


def test_request_latency_metrics_on_rays_metrics_endpoint(served: Served) -> None:
    """The ingress's request histogram reaches Ray's Prometheus endpoint (read over HTTP), per route and status."""
    import time

    import ray

    node = next(n for n in ray.nodes() if n["Alive"])
    url = f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    served.client().completions.create(model=served.model, prompt="metrics", max_tokens=2)
    want = ('ray_herd_serve_request_latency_s_count', 'route="/v1/completions"', 'status="200"')
    deadline, lines = time.monotonic() + 120, []
    while time.monotonic() < deadline:  # Ray's agent exports what replicas reported, every few seconds
        text = httpx.get(url, timeout=30).text
        lines = [ln for ln in text.splitlines() if all(w in ln for w in want)]
        if lines:
            break
        time.sleep(2)
    assert lines, f"no {want[0]} for /v1/completions on {url}"
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1
    assert any(ln.startswith("ray_herd_serve_request_latency_s_bucket") for ln in text.splitlines())


@pytest.fixture
def keyed(served, ray_local, tiny_model):
    """A second, short-lived app of herd's engine with an API key and two models (routed by `model`)."""
    yield from deploy_served(ray_local, tiny_model, "herd", api_key="sk-herd-test", app="herdkeyed",
                             names=("tiny-a", "tiny-b"), shutdown=False, num_cpus=0.5)


def test_api_key_on_and_two_models_routed_by_model(keyed: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        keyed.client(key=None).models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        keyed.client(key="sk-wrong").completions.create(model="tiny-a", prompt="x", max_tokens=1)
    c = keyed.client()
    assert sorted(m.id for m in c.models.list().data) == ["tiny-a", "tiny-b"]
    for name in ("tiny-a", "tiny-b"):
        r = c.completions.create(model=name, prompt="the quick", max_tokens=3, temperature=0)
        assert r.model == name and r.choices[0].text
    r = httpx.post(f"{keyed.url}/completions", json={"prompt": "x"}, headers=keyed.headers())  # no `model`
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_required"


def test_deploy_flow_is_a_lineage_node_and_redeploys_when_down(served: Served, ray_local, tiny_model, herd_home):
    """The deploy step: MLflow run with the model as input and the URL tag; reused while the endpoint answers,
    deployed again once it is stopped."""
    import shutil

    from mlflow import MlflowClient
    from ray import serve

    from herd.flows.deploy import deploy_step
    from herd.platform.config import RuntimeConfig
    from herd.platform.runner import Resources, Runner, Step
    from herd.platform.runtime import Runtime
    from herd.serve.config import DeployConfig

    ckpt = tiny_model[0]

    def make(ctx) -> None:  # stands in for distill.train: a committed student model
        out = ctx.output_dir("model", format="hf")
        for f in ckpt.iterdir():
            if f.is_file() and f.name != "MANIFEST.json":
                shutil.copyfile(f, out / f.name)

    cfg = DeployConfig(engine="herd", app_name="flowtest", route_prefix="/flowtest", num_cpus=0.5,
                       max_model_len=512, max_num_seqs=4)
    steps = [Step("up.make", make, outputs={"model": "model"}, roles={"model": "student"},
                  resources=Resources(cpus=0), in_driver=True),
             deploy_step(cfg, {"student": "up.make.model"})]
    rt = Runtime(RuntimeConfig(home=str(herd_home), experiment="deploy-flow"))
    try:
        res = Runner(rt).run(steps)
        rec = json.loads((rt.artifact_store().get(res.outputs["deploy.serve"]["endpoint"]).local_path()
                          / "endpoint.json").read_text())
        url = rec["url"]
        assert url.endswith("/flowtest/v1") and rec["models"][0]["role"] == "student"
        client = MlflowClient(rt.tracking_uri)
        run = client.get_run(res.records["deploy.serve"].run_id)
        assert run.data.tags["herd.endpoint.url"] == url
        model_id = res.records["up.make"].models["model"]
        assert model_id in [m.model_id for m in run.inputs.model_inputs]
        oa = openai.OpenAI(base_url=url, api_key="none", max_retries=0)
        card = oa.models.list().data[0]
        assert card.id == "herd-student" and card.model_extra["metadata"]["herd"]["mlflow_model_id"] == model_id
        done = oa.completions.create(model="herd-student", prompt="the", max_tokens=2, extra_body={"ignore_eos": True})
        assert done.usage.completion_tokens == 2

        again = Runner(rt).run(steps)
        assert "deploy.serve" in again.reused  # the endpoint answers: nothing to do
        serve.delete("flowtest")
        third = Runner(rt).run(steps)
        assert "deploy.serve" in third.executed  # it was down: deployed again
        assert httpx.get(url.rsplit("/v1", 1)[0] + "/health", timeout=30).json()["models"] == ["herd-student"]
    finally:
        serve.delete("flowtest")


def test_pending_resources_fail_fast_naming_what_is_lacking(served: Served, tiny_model) -> None:
    """A replica the cluster can never hold fails at once with the resources it lacked (no timeout wait)."""
    import time

    from ray import serve

    from herd.serve.app import DeployError, ModelSpec, deploy
    from herd.serve.config import DeployConfig

    cfg = DeployConfig(engine="herd", app_name="toobig", route_prefix="/toobig", num_cpus=64, max_model_len=512)
    t0 = time.monotonic()
    with pytest.raises(DeployError, match=r"CPU 64 \(free [\d.]+ of 2\)"):
        deploy([ModelSpec(id="big", path=str(tiny_model[0]), engine="herd")], cfg)
    assert time.monotonic() - t0 < 120
    assert "toobig" not in serve.status().applications or serve.status().applications["toobig"].status in (
        "DELETING", "NOT_STARTED")
