"""A request's JSON body, read within bounds: its media type, its size, the time it takes to arrive, and
JSON that Python's parser takes but a client must not send (NaN, nesting past the recursion limit, other
encodings than UTF-8). Every refusal is a ``RequestError`` (408, 413, 415 or 400)."""

from __future__ import annotations

import asyncio
import json
import math

from fastapi import Request
from starlette.requests import ClientDisconnect

from .engine import RequestError

CLOSE = {"Connection": "close"}
# After a 413, a client that asked for its connection to be closed (urllib does) reads the answer only if
# its body was read: uvicorn closes at once, and closing on unread data resets the connection under the
# client's write. Such a body is read on and dropped, up to this many times the limit; a keep-alive
# client's rest of the body uvicorn drops itself after the answer.
DRAIN_FACTOR = 4


def check_media_type(request: Request) -> None:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json":
        raise RequestError(415, "unsupported_media_type", "the body must be sent as application/json, not "
                           f"{media or 'without a Content-Type'}")


async def read_json(request: Request, limit: int, timeout_s: float):
    """The request's JSON body. 413 past ``limit`` bytes (nothing past the limit is kept), 408 when it has
    not all arrived within ``timeout_s``, 415 unless it is application/json, 400 unless it is JSON."""
    declared = declared_length(request)
    too_large = None
    if declared is not None and declared > limit:
        too_large = RequestError(413, "body_too_large", f"the body has {declared} bytes; at most {limit}")
    else:
        check_media_type(request)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            if too_large is None:
                async for chunk in request.stream():
                    size += len(chunk)
                    if size > limit:
                        too_large = RequestError(413, "body_too_large", f"the body passes {limit} bytes")
                        break
                    chunks.append(chunk)
            if too_large is not None:
                await drop_rest(request, size, limit * DRAIN_FACTOR)
    except ClientDisconnect:
        raise RequestError(400, "incomplete_body", "the client closed the connection within its body") \
            from None
    except TimeoutError:
        if too_large is not None:
            too_large.headers = CLOSE
            raise too_large from None
        raise RequestError(408, "body_timeout", f"the body did not arrive within {timeout_s:g} s",
                           headers=CLOSE) from None
    if too_large is not None:
        raise too_large
    return parse_json(b"".join(chunks))


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


def parse_json(body: bytes):
    """``body`` as JSON: strict UTF-8, no NaN or Infinity (nor numbers too large for a float)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RequestError(400, "invalid_json", f"the body is not UTF-8 (byte {err.start}: {err.reason})") \
            from None
    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite_float)
    except RecursionError:
        raise RequestError(400, "too_deep", "the body nests arrays or objects too deeply") from None
    except ValueError as err:  # not JSON, a non-finite number, an integer of too many digits
        raise RequestError(400, "invalid_json", f"the body is not JSON: {err}") from None


def no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text[:40]} is too large for a number")
    return value
