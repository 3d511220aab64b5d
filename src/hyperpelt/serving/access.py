"""Who may ask: the API key (``Authorization: Bearer``) and the Host names the server answers to.

Both are ASGI middleware in front of every route; their refusals are the server's one JSON error body.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from pathlib import Path

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..errors import UserError
from .engine import RequestError
from .replies import error_response

KEY_VARIABLE = "HYPERPELT_API_KEY"
# Open without the key: liveness and readiness (for probes), and the playground's page and files, which a
# browser loads without headers (the page asks for the key and sends it on its own requests).
OPEN_PATHS = frozenset({"/health", "/ready", "/", "/playground.js", "/playground.css", "/favicon.ico"})
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def api_key(key_file: str | None, environ=os.environ) -> str | None:
    """The key from ``key_file``, else from $HYPERPELT_API_KEY, else None (no key asked for). A file that
    cannot be read, or a key that is empty or not one word of printable ASCII, is a ``UserError``."""
    if key_file is not None:
        try:
            key, where = Path(key_file).read_text(encoding="utf-8").strip(), f"the API key file {key_file}"
        except (OSError, UnicodeDecodeError) as err:
            reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
            raise UserError(f"cannot read the API key file {key_file}: {reason}") from None
    elif KEY_VARIABLE in environ:
        key, where = environ[KEY_VARIABLE].strip(), f"${KEY_VARIABLE}"
    else:
        return None
    if not key:
        raise UserError(f"{where} is empty")
    if not all("!" <= c <= "~" for c in key):
        raise UserError(f"{where}: the key must be one word of printable ASCII (no spaces or line breaks)")
    return key


def allowed_hosts(allowed: str | None, bound_to: str) -> list[str]:
    """The Host names to answer: ``allowed`` (a comma list; ``*`` for any), else the loopback names when
    the server listens on a loopback address, else any."""
    if allowed is not None:
        return [name.strip() for name in allowed.split(",") if name.strip()] or ["*"]
    try:
        loopback = ipaddress.ip_address(bound_to.strip("[]")).is_loopback
    except ValueError:
        loopback = bound_to == "localhost"
    return list(LOOPBACK_NAMES) if loopback else ["*"]


class RequireKey:
    """ASGI middleware: ``Authorization: Bearer <key>`` on every path but ``OPEN_PATHS``, else 401."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode("ascii")

    def allows(self, headers: Headers) -> bool:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        # compared as bytes, in constant time (the header is latin-1 text, so any token encodes)
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode("latin-1"), self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or self.allows(Headers(scope=scope)):
            return await self.app(scope, receive, send)
        said = "a wrong API key" if "authorization" in Headers(scope=scope) else "no API key"
        refusal = RequestError(401, "unauthorized", f"{said}: send 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
        await error_response(refusal)(scope, receive, send)


class AllowedHosts:
    """ASGI middleware: Starlette's ``TrustedHostMiddleware`` deciding, our JSON body on its 400."""

    def __init__(self, app, hosts: list[str]):
        self.app = app
        self.check = TrustedHostMiddleware(self.passed, allowed_hosts=hosts, www_redirect=False)

    async def passed(self, scope, receive, send):
        scope["hyperpelt.host_allowed"] = True
        await self.app(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.check(scope, receive, send)

        async def refused_as_json(message):
            if scope.get("hyperpelt.host_allowed"):
                return await send(message)
            if message["type"] == "http.response.start":  # the middleware's own plain-text 400
                host = Headers(scope=scope).get("host", "")
                refusal = RequestError(400, "invalid_host", f"this server does not answer to host '{host}' "
                                       "(see --allowed-hosts)")
                await error_response(refusal)(scope, receive, send)

        await self.check(scope, receive, refused_as_json)
