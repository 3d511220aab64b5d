"""The HTTP layer: FastAPI routes over a ``Service``; every refusal is one JSON body with its status.

Errors: ``{"error": message, "error_type": short name, "instance": index or null}``. 400 malformed JSON
(not UTF-8, NaN or Infinity, nested too deep), wrong types or a Host not allowed, 401 a missing or wrong
API key, 408 a body that does not arrive in time, 413 a body too large or too many instances, 415 a body
that is not application/json, 422 an unknown task or a missing or empty field, 429 a full queue (with
Retry-After), 503 not ready or draining, 504 a request past its timeout, 500 only for instances that fail
alone. Nothing a request sends can stop the server.
"""

from __future__ import annotations

import time
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from .access import AllowedHosts, RequireKey, allowed_hosts, api_key
from .body import MAX_VALUES, read_json
from .engine import RequestError, task_description
from .metrics import CountResponses
from .replies import SecurityHeaders, error_response
from .service import Service
from .task_routes import add_task_routes

# the playground's files: its page, script and style (no inline script or style: the CSP forbids them)
PLAYGROUND = {"/": ("playground.html", "text/html; charset=utf-8"),
              "/playground.js": ("playground.js", "text/javascript; charset=utf-8"),
              "/playground.css": ("playground.css", "text/css; charset=utf-8")}


def instances_of(payload) -> list:
    if not isinstance(payload, dict) or not isinstance(payload.get("instances"), list):
        raise RequestError(400, "invalid_type", 'the body must be {"instances": [...]}')
    if not payload["instances"]:
        raise RequestError(422, "no_instances", '"instances" is empty')
    return payload["instances"]


def request_tasks(instances: list, serves) -> list[str]:
    """The task label of each instance for the request counter (names ``serves`` denies count as
    "unknown")."""
    return [i.get("task") if isinstance(i, dict) and serves(i.get("task")) else "unknown" for i in instances]


def create_app(service: Service) -> FastAPI:
    """The routes over ``service``, behind the Host check, the API key (if one is set: a key file that
    cannot be read raises ``UserError`` here, before the model loads), the response counter and the
    security headers."""
    options = service.options
    key = api_key(options.api_key_file)
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
            service.check_capacity()
            body = await read_json(request, options.max_body_bytes, options.body_timeout_s,
                                   max(MAX_VALUES, 100 * options.max_client_batch))
            instances = instances_of(body)
            tasks = request_tasks(instances, service.engine.serves)
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

    add_task_routes(app, service)

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

    def playground_file(path: str):
        name, media_type = PLAYGROUND[path]
        file = resources.files(__package__).joinpath(name)
        return lambda: Response(file.read_bytes(), media_type=media_type)

    for path in PLAYGROUND:
        app.add_api_route(path, playground_file(path), methods=["GET"], include_in_schema=False)

    if key is not None:
        app.add_middleware(RequireKey, key=key)
    app.add_middleware(AllowedHosts, hosts=allowed_hosts(options.allowed_hosts, options.host))
    app.add_middleware(CountResponses, metrics=service.metrics, paths=frozenset(r.path for r in app.routes))
    app.add_middleware(SecurityHeaders)  # the outermost: on every response, refusals included
    return app
