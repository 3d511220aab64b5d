"""The HTTP layer: FastAPI routes over a ``Service``; every refusal is one JSON body with its status.

Errors: ``{"error": message, "error_type": short name, "instance": index or null}``. 400 malformed JSON or
types, 413 a body too large or too many instances, 422 an unknown task or a missing or empty field, 429
a full queue (with Retry-After), 503 not ready or draining, 504 a request past its timeout, 500 only for
instances that fail alone. Nothing a request sends can stop the server.
"""

from __future__ import annotations

import json
import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException

from .engine import RequestError, task_description
from .service import Service


def error_response(err: RequestError) -> JSONResponse:
    body = {"error": str(err), "error_type": err.error_type, "instance": err.instance}
    return JSONResponse(body, status_code=err.status, headers=err.headers)


async def read_json(request: Request, limit: int):
    """The request's JSON body; 413 past ``limit`` bytes (read no further), 400 if it is not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, "body_too_large", f"the body has {declared} bytes; at most {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, "body_too_large", f"the body passes {limit} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(400, "invalid_json", f"the body is not JSON: {err}") from None


def instances_of(payload) -> list:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise RequestError(400, "invalid_type", 'the body must be {"instances": [...]}')
    if not payload["instances"]:
        raise RequestError(422, "no_instances", '"instances" is empty')
    return payload["instances"]


def request_tasks(instances: list, served: list[str]) -> list[str]:
    """The task label of each instance for the request counter (names not served count as "unknown")."""
    return [i.get("task") if isinstance(i, dict) and i.get("task") in served else "unknown"
            for i in instances]


def create_app(service: Service) -> FastAPI:
    app = FastAPI(title="hyperpelt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(RequestError)
    async def refused(request: Request, err: RequestError):
        return error_response(err)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException):  # unknown routes, wrong methods
        return error_response(RequestError(err.status_code, "http", str(err.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, err: Exception):
        reason = " ".join(str(err).split()) or type(err).__name__
        return error_response(RequestError(500, "internal", reason))

    @app.post("/v1/predict")
    async def predict(request: Request):
        start, tasks = time.monotonic(), ["-"]
        service.in_flight += 1
        try:
            service.check_ready()
            instances = instances_of(await read_json(request, service.options.max_body_bytes))
            tasks = request_tasks(instances, service.engine.task_names)
            predictions = await service.predict(instances)
        except RequestError as err:
            service.metrics.answered(tasks, err.status)
            return error_response(err)
        finally:
            service.in_flight -= 1
        service.metrics.answered(tasks, 200, time.monotonic() - start)
        return {"model": service.engine.describe()["model"], "run": service.run_dir.name,
                "predictions": predictions}

    @app.get("/v1/tasks")
    async def tasks():
        service.check_ready()
        return {"tasks": [task_description(t) for t in service.engine.tasks]}

    @app.get("/health")
    async def health():
        service.check_alive()
        return {"status": "alive"}

    @app.get("/ready")
    async def ready():
        service.check_ready()
        return {"status": "ready"}

    @app.get("/info")
    async def info():
        return service.info()

    @app.get("/metrics")
    async def metrics():
        return Response(service.metrics.exposition(), media_type="text/plain; version=0.0.4")

    @app.get("/favicon.ico")
    async def favicon():
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files(__package__).joinpath("playground.html").read_text(encoding="utf-8")

    return app
