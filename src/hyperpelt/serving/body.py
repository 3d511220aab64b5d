"""A request's JSON body, read within bounds: its media type, its size, the time it takes to arrive, and
JSON that Python's parser takes but a client must not send (NaN, nesting past the recursion limit, other
encodings than UTF-8). Every refusal is a ``RequestError`` (408, 413, 415 or 400)."""

from __future__ import annotations

import asyncio
import json
import math
import re

from fastapi import Request
from starlette.requests import ClientDisconnect

from .engine import RequestError

CLOSE = {"Connection": "close"}
# After a 413, a client that asked for its connection to be closed (urllib does) reads the answer only if
# its body was read: uvicorn closes at once, and closing on unread data resets the connection under the
# client's write. Such a body is read on and dropped, up to this many times the limit; a keep-alive
# client's rest of the body uvicorn drops itself after the answer.
DRAIN_FACTOR = 4
# A request of max-client-batch instances with a few fields each holds a few hundred values; any more are
# refused before Python's parser builds them.
MAX_VALUES = 10_000
STRINGS = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)  # a JSON string, escapes included


def check_media_type(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, "unsupported_media_type", "the body must be sent as application/json, not "
                           f"{media or 'without a Content-Type'}")


async def read_json(request: Request, limit: int, timeout_s: float, max_values: int = MAX_VALUES):
    """The request's JSON body. 413 past ``limit`` bytes (nothing past the limit is kept) or past
    ``max_values`` JSON values, 408 when it has not all arrived within ``timeout_s``, 415 unless it is
    application/json, 400 unless it is JSON."""
    declared = declared_length(request)
    refused: list[RequestError] = []  # the 413 found while reading, if any
    if declared is not None and declared > limit:
        refused.append(RequestError(413, "body_too_large", f"the body has {declared} bytes; at most {limit}"))
    else:
        check_media_type(request)
    chunks: list[bytes] = []

    async def receive() -> None:
        size = 0
        if not refused:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    refused.append(RequestError(413, "body_too_large", f"the body passes {limit} bytes"))
                    break
                chunks.append(chunk)
        if refused:
            await drop_rest(request, size, limit * DRAIN_FACTOR)

    try:
        await asyncio.wait_for(receive(), timeout_s)  # (asyncio.timeout needs Python 3.11)
    except ClientDisconnect:
        raise RequestError(400, "incomplete_body", "the client closed the connection within its body") \
            from None
    except asyncio.TimeoutError:
        if refused:
            refused[0].headers = CLOSE
            raise refused[0] from None
        raise RequestError(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s",
                           headers=CLOSE) from None
    if refused:
        raise refused[0]
    return parse_json(b"".join(chunks), max_values)


async def drop_rest(request: Request, size: int, most: int) -> None:
    """Read and drop the rest of the body of a client that asked for its connection to be closed, while it
    stays within ``most`` bytes (``size`` read so far); past that, the answer closes the connection."""
    if "close" not in request.headers.get("connection", "").lower() or "expect" in request.headers:
        return
    declared = declared_length(request)
    if declared is not None and declared > most:
        return
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > most:
                return
    except ClientDisconnect:
        return


def declared_length(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def parse_json(body: bytes, max_values: int = MAX_VALUES):
    """``body`` as JSON: strict UTF-8, no NaN or Infinity (nor numbers too large for a float), and at most
    ``max_values`` values (counted before parsing: a 16 MiB body of ``{},`` would be 6 million objects)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, "invalid_json", f"the body is not UTF-8 (byte {err.start}: {err.reason})") \
            from None
    values = value_count(body)
    if values > max_values:
        raise RequestError(413, "too_many_values", f"the body holds about {values} JSON values; at most "
                           f"{max_values}")
    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite_float)
    except RecursionError:
        raise RequestError(400, "too_deep", "the body nests arrays or objects too deeply") from None
    except ValueError as err:  # not JSON, a non-finite number, an integer of too many digits
        raise RequestError(400, "invalid_json", f"the body is not JSON: {err}") from None


def value_count(body: bytes) -> int:
    """About the number of JSON values in ``body``, read without parsing it: the separators outside strings,
    plus one (nesting without separators is bounded by the parser's depth limit)."""
    bare = STRINGS.sub(b"", body)
    return bare.count(b",") + bare.count(b":") + 1


def no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value
