"""What every reply carries: the one JSON error body, and the security headers on every response."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from .engine import RequestError

# Scripts, styles, images and fetches from this origin only (the playground's files are served beside
# it; no inline script or style), no framing, and no guessing of a response's type from its bytes.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def error_response(err: RequestError) -> JSONResponse:
    """``{"error", "error_type", "instance"}`` with ``err``'s status and headers; a message holding text
    that UTF-8 cannot encode (a lone surrogate from the request) says it escaped."""
    message = str(err).encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": message, "error_type": err.error_type, "instance": err.instance}
    # the generic 500 is answered outside every middleware, so it carries the headers itself
    return JSONResponse(body, status_code=err.status, headers={**SECURITY_HEADERS, **(err.headers or {})})


class SecurityHeaders:
    """ASGI middleware: ``SECURITY_HEADERS`` on every HTTP response."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
            await send(message)

        await self.app(scope, receive, with_headers)
