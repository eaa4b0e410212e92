"""herd's OpenAI-compatible ingress: Ray Serve LLM's ``OpenAiIngress`` subclassed, one for both engines.

Ray Serve LLM routes ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions`` to one server deployment
per model (vLLM's ``LLMServer``, or herd's engine through ``herd.serve.herd_server``). This subclass adds what
herd needs in front of either engine, so the API is the same whichever engine answers:

- the API key (``Authorization: Bearer``), checked against a sha256 given at construction (never the key);
- OpenAI error JSON for every failure, string ``code``s, never a 500 for bad input;
- guards: request body size (413), ``max_tokens`` cap, prompt longer than the context (400), special-token
  strings in chat content (400 naming the token: both engines render chats from strings, so this is where
  template injection is stopped), overload (503 with Retry-After);
- lineage on ``/v1/models`` (herd digest, MLflow model id, role), ``/tokenize``, ``/detokenize``,
  ``/tokenizer_info`` (lm-eval's remote tokenizer) and ``/health``;
- request latency and count metrics on Ray's metrics endpoint (``ray_herd_serve_request_latency_s``).

Built by ``herd.serve.app.build_app``; never imported at module level by code that runs without vLLM.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

# Private imports, each because Ray 2.60's public ``ray.serve.llm`` has no name for it: the model card type the
# ingress returns, the exception Ray's server raises for engine errors (mapped to OpenAI JSON below), and the
# endpoint map herd's extends (Ray's public builder hard-codes it).
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, OpenAIHTTPException
from ray.llm._internal.serve.core.ingress.ingress import DEFAULT_ENDPOINTS
from ray.serve.exceptions import BackPressureError
from ray.serve.llm.ingress import OpenAiIngress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from herd.serve.errors import APIError, error_body, validation_message

_SPECIAL = re.compile(r"<\|[^<>|\s]{1,64}\|>")
_OPEN_PATHS = {"/health", "/-/healthz", "/-/routes"}


class _Guard:
    """Per-replica settings of the ASGI guard (set by the ingress constructor, read per request)."""

    api_key_sha256: str | None = None
    max_body_bytes: int = 2 * 1024**2
    retry_after: str = "1"
    latency = None
    requests = None


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content=body, headers=headers)


class GuardMiddleware:
    """Pure ASGI (streams pass through untouched): API key, body size limit, latency metrics."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):  # an app under a route prefix (/myapp/health)
            path = path[len(root):] or "/"
        status = {"code": 500}

        async def send_wrapper(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                _observe(path, status["code"], time.perf_counter() - start)

        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if _Guard.api_key_sha256 and path not in _OPEN_PATHS:
            auth = headers.get("authorization", "")
            key = auth[7:].strip() if auth[:7].lower() == "bearer " else headers.get("x-api-key", "")
            digest = hashlib.sha256(key.encode()).hexdigest()
            if not key or not hmac.compare_digest(digest, _Guard.api_key_sha256):
                what = "a wrong API key" if key else "no API key"
                resp = _json(401, error_body(f"request has {what}: send the key of this deployment as "
                                             "'Authorization: Bearer <key>' (openai: api_key=...)",
                                             "authentication_error", None, "invalid_api_key"),
                             {"www-authenticate": "Bearer"})
                return await resp(scope, receive, send_wrapper)
        limit = _Guard.max_body_bytes
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return await _too_large(limit)(scope, receive, send_wrapper)
        seen = {"n": 0}

        async def receive_limited() -> dict:
            message = await receive()
            if message["type"] == "http.request":
                seen["n"] += len(message.get("body", b""))
                if seen["n"] > limit:  # chunked bodies carry no Content-Length: count what arrives
                    raise APIError(413, _too_large_msg(limit), code="request_too_large")
            return message

        return await self.app(scope, receive_limited, send_wrapper)


def _too_large_msg(limit: int) -> str:
    return f"request body is larger than this deployment's limit of {limit} bytes (deploy.limits.max_body_bytes)"


def _too_large(limit: int) -> JSONResponse:
    return _json(413, error_body(_too_large_msg(limit), "invalid_request_error", None, "request_too_large"))


def _observe(path: str, status: int, seconds: float) -> None:
    route = path if path in ("/v1/completions", "/v1/chat/completions", "/v1/models", "/tokenize",
                             "/detokenize", "/tokenizer_info", "/health") else "other"
    tags = {"route": route, "status": str(status)}
    if _Guard.latency is not None:
        _Guard.latency.observe(seconds, tags=tags)
        _Guard.requests.inc(1, tags=tags)


def make_app() -> FastAPI:
    """The FastAPI app of the ingress: OpenAI-shaped exception handlers and the guard middleware."""
    app = FastAPI(title="herd", docs_url=None, redoc_url=None)

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError) -> JSONResponse:
        return _json(e.status, e.body(), e.headers or None)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        msg, param = validation_message(list(e.errors()))
        return _json(400, error_body(msg, "invalid_request_error", param, "invalid_parameter"))

    @app.exception_handler(OpenAIHTTPException)
    async def _engine_error(request: Request, e: OpenAIHTTPException) -> JSONResponse:
        status = int(e.status_code) if 400 <= int(e.status_code) < 600 else 500
        code = {400: "invalid_parameter", 404: "not_found", 408: "timeout", 429: "rate_limited",
                503: "overloaded"}.get(status)
        headers = {"retry-after": _Guard.retry_after} if status in (429, 503) else None  # an engine's overload
        return _json(status, error_body(e.message, e.type or "invalid_request_error", None, code), headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = "not_found" if e.status_code == 404 else None
        return _json(e.status_code, error_body(str(e.detail), "invalid_request_error", None, code))

    app.add_middleware(GuardMiddleware)
    return app


def _tokenizer(path: str) -> tuple[Any, dict[str, Any], set[str]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    cfg_file = Path(path) / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text()) if cfg_file.exists() else {}
    special = {t.content for t in tok.get_added_tokens_decoder().values() if t.special}
    return tok, cfg, special


class HerdIngress(OpenAiIngress):
    """OpenAiIngress plus herd's guards, lineage and tokenizer routes (see the module docstring).

    ``served``: model id -> {"tokenizer": dir, "max_model_len": int, "max_tokens": int}.
    """

    def __init__(self, llm_deployments: dict, model_cards: dict, *, lora_paths: dict | None = None,
                 served: dict[str, dict[str, Any]] | None = None, api_key_sha256: str | None = None,
                 max_body_bytes: int = 2 * 1024**2, retry_after_s: int = 1):
        super().__init__(llm_deployments, model_cards, lora_paths=lora_paths)
        from ray.util import metrics

        _Guard.api_key_sha256 = api_key_sha256
        _Guard.max_body_bytes = max_body_bytes
        _Guard.latency = metrics.Histogram(
            "herd_serve_request_latency_s", description="Latency of herd endpoint requests (to the last byte).",
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120], tag_keys=("route", "status"))
        _Guard.requests = metrics.Counter("herd_serve_requests", description="herd endpoint requests.",
                                          tag_keys=("route", "status"))
        self._served = dict(served or {})
        self._retry_after = _Guard.retry_after = str(retry_after_s)
        self._tok: dict[str, tuple[Any, dict[str, Any], set[str]]] = {
            mid: _tokenizer(spec["tokenizer"]) for mid, spec in self._served.items()}

    # ------------------------------------------------------------------------------------------ routing
    async def _get_model_id(self, model: str | None) -> str:
        served = sorted(self._model_cards)
        if model is None:
            if len(served) == 1:
                return served[0]
            raise APIError(400, f"say which model: this endpoint serves {', '.join(served)}", param="model",
                           code="model_required")
        if model not in self._model_cards:
            raise APIError(404, f"model {model!r} is not served here; served: {', '.join(served)} "
                           "(GET /v1/models lists them)", param="model", code="model_not_found")
        return model

    async def model_data(self, model: str) -> ModelCard:
        await self._get_model_id(model)
        return self._model_cards[model]

    # ------------------------------------------------------------------------------------------- guards
    def _spec(self, model_id: str) -> dict[str, Any]:
        return self._served.get(model_id, {})

    def _check_max_tokens(self, model_id: str, value: int | None, param: str) -> None:
        cap = self._spec(model_id).get("max_tokens")
        if value is not None and value < 1:
            raise APIError(400, f"{param} must be at least 1, got {value}", param=param, code="invalid_parameter")
        if value is not None and cap and value > cap:
            raise APIError(400, f"{param}={value} is above this deployment's limit {cap} "
                           "(deploy.limits.max_tokens)", param=param, code="invalid_parameter")

    def _check_context(self, model_id: str, n_prompt: int, max_tokens: int | None) -> None:
        limit = self._spec(model_id).get("max_model_len")
        if limit and n_prompt + (max_tokens or 0) > limit:
            raise APIError(400, f"this model's maximum context length is {limit} tokens; the prompt has "
                           f"{n_prompt} tokens and asks for {max_tokens or 0} more: shorten the prompt or "
                           "lower max_tokens", param="prompt", code="context_length_exceeded")

    def _check_special(self, model_id: str, text: str, param: str) -> None:
        special = self._tok[model_id][2] if model_id in self._tok else set()
        for m in _SPECIAL.finditer(text):
            if m.group(0) in special:
                raise APIError(400, f"{param} contains the special token {m.group(0)!r}; special tokens are "
                               "added by the chat template, never taken from message text",
                               param=param, code="special_token_in_content")

    def _prompt_lengths(self, model_id: str, prompt: Any) -> list[int]:
        if model_id not in self._tok:
            return []
        tok = self._tok[model_id][0]
        if isinstance(prompt, str):
            return [len(tok.encode(prompt).ids)]
        if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            return [len(prompt)]
        if isinstance(prompt, list):
            return [len(p) if isinstance(p, list) else len(tok.encode(p).ids) for p in prompt
                    if isinstance(p, (list, str))]
        return []

    async def _call(self, body: Any, call_method: str, request: Request) -> Response:
        try:
            return await self._process_llm_request(body, call_method=call_method, raw_request=request)
        except BackPressureError as e:
            raise APIError(503, f"the model server is overloaded ({e}); retry shortly", code="overloaded",
                           headers={"retry-after": self._retry_after}) from None

    # ------------------------------------------------------------------------------------------- routes
    async def completions(self, body: CompletionRequest, request: Request) -> Response:
        model_id = await self._get_model_id(body.model)
        body.model = model_id
        self._check_max_tokens(model_id, body.max_tokens, "max_tokens")
        for n in self._prompt_lengths(model_id, body.prompt):
            self._check_context(model_id, n, body.max_tokens)
        return await self._call(body, "completions", request)

    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:
        model_id = await self._get_model_id(body.model)
        body.model = model_id
        max_tokens = body.max_completion_tokens or body.max_tokens
        self._check_max_tokens(model_id, max_tokens, "max_tokens")
        for i, msg in enumerate(body.messages):
            content = msg.get("content") if isinstance(msg, dict) else getattr(msg, "content", None)
            parts = [content] if isinstance(content, str) else [
                p.get("text", "") for p in (content or []) if isinstance(p, dict)]
            for text in parts:
                if isinstance(text, str):
                    self._check_special(model_id, text, f"messages[{i}].content")
        return await self._call(body, "chat", request)

    async def _json_body(self, request: Request) -> dict[str, Any]:
        try:
            data = await request.json()
        except ValueError:
            raise APIError(400, "request body is not JSON", code="invalid_json") from None
        if not isinstance(data, dict):
            raise APIError(400, "request body must be a JSON object", code="invalid_json")
        return data

    async def tokenize(self, request: Request) -> Response:  # type: ignore[override]
        data = await self._json_body(request)
        model_id = await self._get_model_id(data.get("model"))
        tok = self._tok[model_id][0]
        prompt = data.get("prompt")
        if not isinstance(prompt, str):
            raise APIError(400, "prompt must be a string", param="prompt", code="invalid_parameter")
        ids = tok.encode(prompt, add_special_tokens=bool(data.get("add_special_tokens", True))).ids
        out: dict[str, Any] = {"tokens": ids, "count": len(ids),
                               "max_model_len": self._spec(model_id).get("max_model_len")}
        if data.get("return_token_strs"):
            out["token_strs"] = [tok.id_to_token(i) for i in ids]
        return JSONResponse(out)

    async def detokenize(self, request: Request) -> Response:  # type: ignore[override]
        data = await self._json_body(request)
        model_id = await self._get_model_id(data.get("model"))
        tokens = data.get("tokens")
        vocab = self._tok[model_id][0].get_vocab_size()
        if not isinstance(tokens, list) or not all(isinstance(t, int) and 0 <= t < vocab for t in tokens):
            raise APIError(400, f"tokens must be a list of token ids in [0, {vocab})", param="tokens",
                           code="invalid_parameter")
        return JSONResponse({"prompt": self._tok[model_id][0].decode(tokens, skip_special_tokens=False)})

    async def tokenizer_info(self, request: Request) -> Response:
        model_id = await self._get_model_id(request.query_params.get("model"))
        _, cfg, _ = self._tok[model_id]
        keys = ("bos_token", "eos_token", "pad_token", "chat_template", "tokenizer_class", "add_bos_token")
        info = {k: cfg.get(k) for k in keys}
        info["model_max_length"] = self._spec(model_id).get("max_model_len")
        return JSONResponse(info)

    async def health(self) -> Response:
        return JSONResponse({"status": "ok", "models": sorted(self._model_cards)})


ENDPOINTS = {
    **{k: v for k, v in DEFAULT_ENDPOINTS.items() if k in ("models", "model_data", "completions", "chat",
                                                            "tokenize", "detokenize")},
    "tokenizer_info": lambda app: app.get("/tokenizer_info"),
    "health": lambda app: app.get("/health"),
}

__all__ = ["ENDPOINTS", "GuardMiddleware", "HerdIngress", "make_app"]
