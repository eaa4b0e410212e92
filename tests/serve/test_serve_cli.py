"""`herd serve MODEL` end to end, as a user runs it: a local HF checkpoint dir deployed with herd's engine on the
persistent local Ray that the command starts (as `herd up` does), the printed URL + curl + openai example, the
endpoint answering the official client, `herd status` listing it, `herd down` stopping it. One deployment, its own
HERD_HOME and Ray head (never the session's Ray), stopped by `herd down` whatever happens.

    .venv/bin/python -m pytest tests/serve/test_serve_cli.py -q        # ~1-2 min on 2 cores
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import openai
import pytest

from tests.conftest import free_port
from tests.serve.tiny import write_tiny_model

pytestmark = pytest.mark.slow


# What `herd run` and `herd flow` do on HERD_HOME's own head before steps run (herd.cli._do_run), in a fresh process
# attached to the test's head: a step named by argv[1] is never cached here, so it has to run.
PROBE = """
import sys
from herd.cli import _free_cores_of_old_endpoints
from herd.platform.config import RuntimeConfig
from herd.platform.runtime import Runtime
from herd.platform.step import Step
rt = Runtime(RuntimeConfig())
rt.prepare()  # the head's token settings, before anything imports ray (tests.conftest does)
from tests.serve.test_serve_cli import noop_step
assert rt.on_own_head()
_free_cores_of_old_endpoints(rt, [Step(sys.argv[1], noop_step, outputs={"out": "report"})], None, (), True)
rt.stop()
"""


def noop_step(ctx) -> None:  # the probe's step: planned, never run
    raise AssertionError("the probe only plans")


def _herd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "herd", *args], check=False, env=env, capture_output=True, text=True,
                          timeout=420)


def test_herd_serve_status_down(tmp_path) -> None:
    ckpt = write_tiny_model(tmp_path / "ckpt")
    home = tmp_path / "home"
    env = dict(os.environ, HERD_HOME=str(home))
    env.pop("RAY_AUTH_TOKEN_PATH", None)  # herd chooses its own token file under HERD_HOME
    env.pop("RAY_ADDRESS", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    try:
        served = _herd("serve", str(ckpt), "--engine", "herd", "--port", str(port), "--name", "tiny",
                       "--set", "deploy.num_cpus=0.5", "--set", "deploy.max_model_len=512", env=env)
        out = served.stdout
        assert served.returncode == 0, out[-3000:] + served.stderr[-3000:]
        assert url in out and f"curl {url}/models" in out and f"curl {url}/chat/completions" in out
        assert "from openai import OpenAI" in out and f'base_url="{url}"' in out and "herd down" in out
        client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120)
        card = client.models.list().data[0]
        assert card.id == "tiny" and card.model_extra["metadata"]["herd"]["role"] == "external"
        done = client.completions.create(model="tiny", prompt="the quick", max_tokens=3, temperature=0,
                                         extra_body={"ignore_eos": True})
        assert done.usage.completion_tokens == 3

        status = _herd("status", "--json", env=env)
        assert status.returncode == 0, status.stderr[-3000:]
        rows = json.loads(status.stdout)
        assert [(r["url"], r["up"], [m["id"] for m in r["models"]]) for r in rows] == [(url, True, ["tiny"])]

        # a re-run with only deploy to do leaves the endpoint up; one with a step to run frees its CPUs first
        # (its replicas' reservations would keep a Ray Train worker group from ever being placed)
        kept = subprocess.run([sys.executable, "-c", PROBE, "deploy.serve"], env=env, capture_output=True,
                              text=True, timeout=300, check=False)
        assert kept.returncode == 0 and "stopped endpoint" not in kept.stdout, kept.stdout + kept.stderr[-3000:]
        assert httpx.get(f"{url}/models", timeout=30).status_code == 200
        freed = subprocess.run([sys.executable, "-c", PROBE, "rl.train"], env=env, capture_output=True,
                               text=True, timeout=300, check=False)
        assert freed.returncode == 0, freed.stdout + freed.stderr[-3000:]
        assert "stopped endpoint" in freed.stdout and "rl.train" in freed.stdout, freed.stdout
        assert json.loads(_herd("status", "--json", env=env).stdout or "[]") == []
    finally:
        down = _herd("down", env=env)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url.rsplit('/v1', 1)[0]}/health", timeout=10)
    after = _herd("status", "--json", env=env)
    assert after.returncode == 0 and json.loads(after.stdout or "[]") == []
