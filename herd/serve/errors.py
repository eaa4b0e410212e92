"""OpenAI-shaped errors for herd's endpoint: ``{"error": {"message", "type", "param", "code"}}``.

The official ``openai`` client maps the HTTP status to its exception class (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 413/422 -> APIStatusError, 429 RateLimitError, >= 500
InternalServerError) and reads ``code``/``param``/``type`` from the body, so every error herd's ingress returns
has this shape, with a string ``code`` a program can switch on. Bad input is never a 500.

    raise APIError(404, f"model {name!r} is not served here; served: ...", param="model", code="model_not_found")
"""

from __future__ import annotations

from typing import Any

# HTTP status -> OpenAI error type (what api.openai.com sends).
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          408: "timeout_error", 413: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error"}


class APIError(Exception):
    """An error answered to the client with ``status`` and the OpenAI JSON body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type or _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """A one-line message and the offending parameter from pydantic/FastAPI validation errors."""
    if not errors:
        return "invalid request body", None
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    param = ".".join(loc) or None
    msg = first.get("msg", "invalid value")
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{param}: {msg}{more}" if param else f"{msg}{more}"), param


__all__ = ["APIError", "error_body", "validation_message"]
