"""The API tests every engine must pass, with the official ``openai`` client against a real Ray Serve deployment.

Imported by ``test_serve_vllm.py`` and ``test_serve_herd.py``; each defines the module fixture ``served``
(one deployment per engine per module, torn down after the module: a live replica starves 2-worker Ray Train
tests on 2 CPUs). ``served`` is an ``Served``: base URL, model id, checkpoint dir, API key (or None).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest

pytestmark = pytest.mark.slow


@dataclass
class Served:
    url: str  # .../v1
    model: str
    ckpt: Path
    api_key: str | None
    engine: str
    digest: str

    def client(self, key: str | None = "__default__") -> openai.OpenAI:
        k = self.api_key if key == "__default__" else key
        return openai.OpenAI(base_url=self.url, api_key=k or "none", max_retries=0, timeout=120)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    @property
    def root(self) -> str:
        return self.url.rsplit("/v1", 1)[0]


def _reference(ckpt: Path, ids: list[int]):
    """transformers' log-softmax over ``ids`` (the offline reference both engines must match)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(ckpt), dtype=torch.float32).eval()
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)


def test_models_list_carries_lineage(served: Served) -> None:
    models = served.client().models.list().data
    assert [m.id for m in models] == [served.model]
    meta = models[0].model_extra["metadata"]["herd"]
    assert meta["digest"] == served.digest and meta["role"] == "external" and meta["engine"] == served.engine


def test_completion_greedy_matches_transformers_and_echo_logprobs(served: Served) -> None:
    c = served.client()
    prompt = httpx.post(f"{served.root}/tokenize", headers=served.headers(),
                        json={"model": served.model, "prompt": "the quick brown fox"}).json()["tokens"]
    assert prompt[0] == 0 and len(prompt) > 3  # <|begin_of_text|> first
    r = c.completions.create(model=served.model, prompt=prompt, max_tokens=1, temperature=0, echo=True, logprobs=1)
    lp = r.choices[0].logprobs
    assert len(lp.token_logprobs) == len(prompt) + 1 and lp.token_logprobs[0] is None
    ref = _reference(served.ckpt, prompt)
    for i, tok in enumerate(prompt[1:], start=1):  # log p(prompt[i] | prompt[:i])
        assert abs(lp.token_logprobs[i] - ref[i - 1, tok].item()) < 2e-3, i
    assert abs(lp.token_logprobs[-1] - ref[-1].max().item()) < 2e-3  # greedy token = argmax
    for i in range(1, len(prompt) + 1):  # lm-eval's is_greedy needs the argmax among the top logprobs
        assert max(lp.top_logprobs[i].values()) >= lp.token_logprobs[i] - 1e-6
    g = c.completions.create(model=served.model, prompt=prompt, max_tokens=6, temperature=0, logprobs=0,
                             extra_body={"ignore_eos": True})
    ids, best = list(prompt), []
    for _ in range(6):  # greedy continuation, token by token, from transformers
        step = _reference(served.ckpt, ids)[-1]
        ids.append(int(step.argmax()))
        best.append(step.max().item())
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(served.ckpt / "tokenizer.json"))
    want = [tok.decode([i], skip_special_tokens=False) for i in ids[len(prompt):]]
    got = g.choices[0].logprobs
    for j in range(6):  # same token (a partial UTF-8 byte prints as '' or U+FFFD) with the greedy logprob
        assert got.tokens[j] == want[j] or {got.tokens[j], want[j]} <= {"", "\ufffd"}, (got.tokens, want)
        assert abs(got.token_logprobs[j] - best[j]) < 2e-3, (j, got.token_logprobs, best)
    assert g.usage.completion_tokens == 6 and g.choices[0].finish_reason == "length"


def test_completion_prompt_forms(served: Served) -> None:
    c = served.client()
    r = c.completions.create(model=served.model, prompt=["a b", "the lazy dog"], max_tokens=3, temperature=0,
                             extra_body={"ignore_eos": True})
    assert [ch.index for ch in r.choices] == [0, 1] and r.usage.completion_tokens == 6
    r2 = c.completions.create(model=served.model, prompt=[[0, 60, 61], [0, 70]], max_tokens=2, temperature=0)
    assert len(r2.choices) == 2 and r2.usage.prompt_tokens == 5


def test_chat_and_stream_with_usage(served: Served) -> None:
    c = served.client()
    msgs = [{"role": "user", "content": "Where does Jonas Kovacs live?"}]
    full = c.chat.completions.create(model=served.model, messages=msgs, max_tokens=8, temperature=0)
    assert full.choices[0].message.role == "assistant" and full.usage.completion_tokens >= 1
    chunks = list(c.chat.completions.create(model=served.model, messages=msgs, max_tokens=8, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert any(ch.choices and ch.choices[0].finish_reason for ch in chunks)


def test_completion_stream_raw_sse_ends_with_done(served: Served) -> None:
    body = {"model": served.model, "prompt": "the quick", "max_tokens": 4, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    with httpx.stream("POST", f"{served.url}/completions", json=body, headers=served.headers(), timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [line[6:] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 4


def _status(served: Served, method: str, path: str, **kw) -> tuple[int, dict]:
    r = httpx.request(method, f"{served.root}{path}", headers={**served.headers(), **kw.pop("headers", {})},
                      timeout=60, **kw)
    return r.status_code, r.json()


@pytest.mark.parametrize("body, status, code", [
    ({"model": "nope", "prompt": "x"}, 404, "model_not_found"),
    ({"prompt": "x", "max_tokens": 0}, 400, None),
    ({"prompt": "x", "max_tokens": 10**6}, 400, None),
    ({"prompt": "x", "temperature": -1}, 400, None),
    ({"prompt": "x", "max_tokens": "many"}, 400, "invalid_parameter"),
    ({"prompt": "word " * 600, "max_tokens": 4}, 400, "context_length_exceeded"),
])
def test_completion_errors_are_openai_shaped(served: Served, body: dict, status: int, code: str | None) -> None:
    got, data = _status(served, "POST", "/v1/completions", json={"model": served.model, **body})
    assert got == status, data
    assert set(data["error"]) >= {"message", "type", "param", "code"} and data["error"]["message"]
    if code:
        assert data["error"]["code"] == code


def test_client_errors_map_to_openai_exceptions(served: Served) -> None:
    c = served.client()
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="missing", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert e.value.code == "model_not_found" and e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=served.model, max_tokens=2,
                                  messages=[{"role": "user", "content": "hi <|header_start|>assistant"}])
    assert "<|header_start|>" in e.value.message and e.value.code == "special_token_in_content"
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model=served.model, messages=[], max_tokens=2)


def test_malformed_and_oversized_bodies(served: Served) -> None:
    got, data = _status(served, "POST", "/v1/completions", content=b"{not json",
                        headers={"content-type": "application/json"})
    assert got == 400 and "error" in data
    got, data = _status(served, "POST", "/v1/completions", content=b"x" * (3 * 1024**2),
                        headers={"content-type": "application/json"})
    assert got == 413 and data["error"]["code"] == "request_too_large"
    got, data = _status(served, "GET", "/v1/nothing-here")
    assert got == 404 and "error" in data


def test_tokenizer_routes_and_health(served: Served) -> None:
    got, info = _status(served, "GET", "/tokenizer_info")
    assert got == 200 and info["eos_token"] == "<|eot|>" and info["bos_token"] == "<|begin_of_text|>"
    got, tok = _status(served, "POST", "/tokenize", json={"prompt": "test", "add_special_tokens": False})
    assert got == 200 and tok["count"] == len(tok["tokens"]) > 0 and tok["tokens"][0] != 0
    got, detok = _status(served, "POST", "/detokenize", json={"tokens": tok["tokens"]})
    assert got == 200 and detok["prompt"] == "test"
    got, h = _status(served, "GET", "/health", headers={"Authorization": ""})
    assert got == 200 and h["models"] == [served.model]
