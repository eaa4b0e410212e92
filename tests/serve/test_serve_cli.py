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
    finally:
        down = _herd("down", env=env)
    assert down.returncode == 0, down.stdout[-3000:] + down.stderr[-3000:]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{url.rsplit('/v1', 1)[0]}/health", timeout=10)
    after = _herd("status", "--json", env=env)
    assert after.returncode == 0 and json.loads(after.stdout or "[]") == []
