"""The routes that add, show and delete a served task: ``POST /v1/tasks``, ``GET`` and ``DELETE
/v1/tasks/{name}``. Behind the API key (when the server has one) as every route but the probes; every
refusal is the server's one JSON error body."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .body import MAX_VALUES, read_json
from .engine import RequestError, shown
from .new_task import MAX_EXAMPLES, read_new_task
from .service import Service


def task_status(row) -> dict:
    """What ``GET /v1/tasks/{name}`` says of a row."""
    return {"task": row.name, "status": row.status, "score": row.score, "detail": row.detail,
            "kind": row.kind, "fields": [key for _, key in row.inputs],
            "labels": None if row.labels is None else list(row.labels), "metrics": list(row.metrics),
            "k": row.k, "of_the_run": row.of_the_run, "created": row.created,
            "url": f"/v1/tasks/{row.name}"}


def _row(service: Service, name: str):
    service.check_ready()
    row = service.engine.served.store.find(name, ready_only=False)
    if row is None:
        raise RequestError(404, "unknown_task", f"no task {shown(name)} in the task store")
    return row


def add_task_routes(app: FastAPI, service: Service) -> None:
    options = service.options

    @app.post("/v1/tasks")
    async def add_task(request: Request):
        service.check_ready()
        if service.task_worker is None:
            raise RequestError(409, "not_supported", "this server learns no new tasks: its run's method has "
                               "no task embedding (hyperpelt, hyperformer, hyperformer++ have one)")
        body = await read_json(request, options.max_body_bytes, options.body_timeout_s,
                               max(MAX_VALUES, 10 * MAX_EXAMPLES))
        new = read_new_task(body, options.max_input_chars)
        row = await run_in_threadpool(service.task_worker.submit, new)  # a transaction: off the event loop
        return JSONResponse({"task": row.name, "status": row.status, "url": f"/v1/tasks/{row.name}"},
                            status_code=202)

    @app.get("/v1/tasks/{name}")
    async def show_task(name: str):
        return task_status(_row(service, name))

    @app.delete("/v1/tasks/{name}")
    async def delete_task(name: str):
        row = _row(service, name)
        if row.of_the_run:
            raise RequestError(409, "run_task", f"task '{row.name}' is one of the run's own tasks; only "
                               "tasks added later can be deleted")
        await run_in_threadpool(service.engine.served.store.remove, row.name)
        service.engine.served.forget(row.id)  # its key and cached weights go before the next batch
        return {"task": row.name, "deleted": True}
