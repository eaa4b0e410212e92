"""Overload shedding without a deployment: herd's engine refuses past ``max_waiting`` and herd's Ray Serve LLM
engine answers that up front as a 503 ``ErrorResponse`` (which the ingress turns into OpenAI's error JSON with
Retry-After; the HTTP case is ``test_serve_herd.py::test_overload_sheds_503_in_openai_shape``). Fast: no Ray.

    .venv/bin/python -m pytest tests/serve/test_serve_overload.py -q
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from herd.serve.engine import Engine, EngineConfig, EngineOverloadedError, SamplingParams


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory):
    from tests.serve.tiny import write_tiny_model

    ckpt = write_tiny_model(tmp_path_factory.mktemp("overload") / "m")
    eng = Engine.from_pretrained(ckpt, EngineConfig(max_num_seqs=1, max_waiting=2, max_model_len=64))
    yield eng
    eng.shutdown()


def _herd_engine(eng: Engine):
    from herd.serve.herd_server import HerdEngine

    h = HerdEngine.__new__(HerdEngine)  # the LLMEngine without Ray's LLMConfig: its engine is given
    h.engine, h.model_id, h._vocab = eng, "tiny", eng.tokenizer.get_vocab_size()
    h.pace = None  # what __init__ sets: streams unpaced (the server class paces them by its batcher's interval)
    return h


async def _answers(h, body: dict) -> list:
    from ray.serve.llm.openai_api_models import CompletionRequest

    return [x async for x in h.completions(CompletionRequest(model="tiny", **body))]


def test_full_waiting_queue_is_a_503_before_any_stream(engine: Engine) -> None:
    h = _herd_engine(engine)
    # the step loop is not running: queued requests stay waiting
    for i in range(2):
        engine.core.add(f"w{i}", [0, 5, 6], SamplingParams(max_tokens=2), lambda out: None)
    with pytest.raises(EngineOverloadedError, match="max_waiting 2"):
        engine.check_capacity()
    for stream in (False, True):
        out = asyncio.run(_answers(h, {"prompt": [0, 5, 6], "max_tokens": 2, "stream": stream}))
        assert len(out) == 1, out  # one ErrorResponse, no stream started
        err = out[0].error
        assert err.code == 503 and err.type == "ServiceUnavailableError" and "overloaded" in err.message
    # bad input stays a 400 whatever the load
    bad = asyncio.run(_answers(h, {"prompt": [0, 5, 6], "max_tokens": 2, "temperature": -1}))
    assert bad[0].error.code == 400 and bad[0].error.param == "temperature"
    for i in range(2):
        engine.core.abort(f"w{i}")
    engine.check_capacity()  # room again
    done = asyncio.run(_answers(h, {"prompt": [0, 5, 6], "max_tokens": 2, "temperature": 0}))
    assert done[0].choices[0].finish_reason in ("length", "stop") and done[0].usage.completion_tokens >= 1


def test_request_output_then_merges_deltas_in_order() -> None:
    from herd.serve.engine import RequestOutput

    a = RequestOutput("r", [1], "a", [-0.5], [{1: -0.5}], prompt_logprobs=[None, -1.0], num_output_tokens=1)
    b = RequestOutput("r", [2, 3], "bc", [-0.1, -0.2], [{2: -0.1}, {3: -0.2}], finished=True,
                      finish_reason="length", num_output_tokens=3, ttft_s=0.1)
    m = a.then(b)
    assert (m.token_ids, m.text, m.logprobs) == ([1, 2, 3], "abc", [-0.5, -0.1, -0.2])
    assert m.top_logprobs == [{1: -0.5}, {2: -0.1}, {3: -0.2}] and m.prompt_logprobs == [None, -1.0]
    assert m.finished and m.finish_reason == "length" and m.num_output_tokens == 3 and m.ttft_s == 0.1
    assert RequestOutput("r", [1], "a").then(RequestOutput("r", [2], "b")).logprobs is None


def test_a_slow_stream_consumer_gets_merged_deltas_with_the_same_tokens(engine: Engine, tmp_path: Path) -> None:
    """A consumer that falls behind the step loop reads fewer, larger deltas: the same tokens and text."""
    p = [0, 5, 6, 7]
    sp = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    want = engine.generate_batch([p], sp)[0]

    async def slow() -> list:
        deltas = []
        async for d in engine.generate(p, sp):
            deltas.append(d)
            await asyncio.sleep(0.05)  # the engine decodes several tokens meanwhile
        return deltas

    deltas = asyncio.run(slow())
    assert [t for d in deltas for t in d.token_ids] == want.token_ids
    assert "".join(d.text for d in deltas) == want.text and deltas[-1].finished
    assert len(deltas) < len(want.token_ids)  # merged
