"""`bitfit-serve`: many BitFit task patches over one frozen backbone, as a JSON HTTP API (FastAPI on Starlette,
under uvicorn).

    bitfit-serve ~/bitfit-runs/minilm/rte/bitfit ~/bitfit-runs/minilm/sst2 --port 8000

Endpoints:
- `GET /health`: status, served checkpoint and its fingerprint, task count, forward passes and rows so far.
- `GET /tasks`: every served task: name, task, method, labels (empty for regression), pair or single text,
  max_length, metric, seed, patch.
- `POST /predict`: one item `{"task": "sst2", "text": "..."}` or a mixed list
  `{"items": [{"task": "rte", "text": "...", "text_pair": "..."}, ...]}` (a top-level "task" is the default of items
  that name none). Answer: `{"predictions": [...], "batch": {...}}`, one prediction per item in order: label,
  label_id and probabilities (or score for regression), logits, and `truncated` when the text was cut to the run's
  max_length as in training. `batch` says what the request was run with: how many requests, rows and tasks the
  batching window collected and how many forward passes they took.
- `GET /openapi.json`: the API as OpenAPI 3.1, from typed models (bitfit_exp.serving.api_models), every error
  status of every route documented; `GET /docs`: the same as one self-contained HTML page (no scripts, no network).

Requests that arrive within `--window-ms` of each other are collected (up to `--max-batch` rows) and run together:
rows of different tasks share one forward pass (bitfit_exp.serving.engine). Bodies are parsed and tokenized in worker
threads (the event loop keeps answering) and refused (413) past `--max-body-mb` before they are read. Bad input is a
4xx with a one-line `{"error": ...}`, never a 500; the server keeps serving.

>>> from bitfit_exp.serving.server import parse_body
>>> parse_body({"task": "sst2", "items": [{"text": "a"}, {"task": "rte", "text": "b", "text_pair": "c"}]})
([{'text': 'a'}, {'task': 'rte', 'text': 'b', 'text_pair': 'c'}], 'sst2')
"""

import asyncio
import json
import traceback
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass

from bitfit_exp.core.errors import first_line
from bitfit_exp.serving.engine import BadInput, MultiTaskEngine, Row


def parse_body(body) -> tuple[list, str | None]:
    """(items, default task) of a /predict body: one item object, or {"items": [...], "task"?: default}."""
    if not isinstance(body, dict):
        raise BadInput(f"the body must be a JSON object (one item, or {{\"items\": [...]}}), got {type(body).__name__}",
                       400)
    if "items" not in body:
        return [body], None
    items, default = body["items"], body.get("task")
    if not isinstance(items, list) or not items:
        raise BadInput("'items' must be a non-empty list of {task, text[, text_pair]} objects", 400)
    if default is not None and not isinstance(default, str):
        raise BadInput(f"the default 'task' must be a string, got {type(default).__name__}")
    return items, default


def parse_json(raw: bytes):
    """The JSON value of a request body, or BadInput 400 (not JSON, not UTF-8, nested too deep to parse).

    >>> parse_json(b"[" * 100_000 + b"]" * 100_000)
    Traceback (most recent call last):
    bitfit_exp.serving.engine.BadInput: the body is not JSON (nested too deeply)
    """
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadInput("the body is not JSON (nested too deeply)", 400) from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"the body is not JSON ({str(e).splitlines()[0]})", 400) from None


async def read_body(request, max_bytes: int) -> bytes:
    """The request body, refused (413) before it is read past `max_bytes`: by its Content-Length when given, else
    while streaming it (chunked uploads)."""
    too_big = f"the body is larger than {max_bytes:,} bytes (--max-body-mb)"
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > max_bytes:
        raise BadInput(too_big, 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadInput(too_big, 413)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass
class Pending:
    rows: list[Row]
    future: asyncio.Future


class Batcher:
    """Collects requests for up to `window_s` after the first one (or until `max_rows` rows) and runs them as one
    list through the engine, in a worker thread so the server keeps accepting requests meanwhile."""

    def __init__(self, engine: MultiTaskEngine, window_s: float, max_rows: int, max_queued_rows: int = 65536):
        self.engine, self.window_s, self.max_rows = engine, window_s, max_rows
        self.max_queued_rows, self.queued_rows = max_queued_rows, 0
        self.queue: asyncio.Queue[Pending] = asyncio.Queue()
        self.worker = ThreadPoolExecutor(1, thread_name_prefix="bitfit-forward")

    async def submit(self, rows: list[Row]) -> tuple[list, dict]:
        """The request's logits and batch info; BadInput 503 when the rows waiting already reach
        `max_queued_rows` (a flood of requests must not grow memory without bound)."""
        if self.queued_rows + len(rows) > self.max_queued_rows:
            raise BadInput(f"the server is busy: {self.queued_rows:,} rows wait for the model (--max-queued-rows "
                           f"{self.max_queued_rows:,}); retry later", 503)
        pending = Pending(rows, asyncio.get_running_loop().create_future())
        self.queued_rows += len(rows)
        await self.queue.put(pending)
        return await pending.future

    async def _get(self, timeout: float | None = None) -> Pending:
        pending = await (self.queue.get() if timeout is None else asyncio.wait_for(self.queue.get(), timeout))
        self.queued_rows -= len(pending.rows)
        return pending

    async def _collect(self) -> list[Pending]:
        group = [await self._get()]
        deadline = asyncio.get_running_loop().time() + self.window_s
        while sum(len(p.rows) for p in group) < self.max_rows:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                group.append(await self._get(left))
            except TimeoutError:
                break
        return group

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = await self._collect()
            rows = [r for p in group for r in p.rows]
            before = self.engine.forward_passes
            try:
                logits = await loop.run_in_executor(self.worker, self.engine.logits, rows)
            except Exception as e:  # a failed forward fails its requests, not the server
                traceback.print_exc()
                for p in group:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            info = {"requests": len(group), "rows": len(rows), "tasks": len({r.task for r in rows}),
                    "forward_passes": self.engine.forward_passes - before}
            start = 0
            for p in group:
                if not p.future.done():  # the client may have gone
                    p.future.set_result((logits[start:start + len(p.rows)], info))
                start += len(p.rows)


def error(message: str, status: int):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def prepare(engine: MultiTaskEngine, raw: bytes, max_items: int) -> list[Row]:
    """Parse, check and tokenize one /predict body (in a worker thread: long texts take a while to tokenize).
    Bad input of any kind is a BadInput: an unexpected error while preparing a request is the request's fault."""
    items, default = parse_body(parse_json(raw))
    if len(items) > max_items:
        raise BadInput(f"{len(items)} items; at most {max_items} per request (--max-items)", 413)
    try:
        return engine.prepare(items, default)
    except BadInput:
        raise
    except Exception as e:
        raise BadInput(f"the request could not be prepared ({first_line(e)})") from None


ROUTES = "GET /health, GET /tasks, POST /predict, GET /openapi.json, GET /docs"
PREDICT_BODY = {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/PredictRequest"},
    "examples": {"one item": {"value": {"task": "sst2", "text": "a gem of a film"}},
                 "mixed tasks": {"value": {"items": [{"task": "rte", "text": "A man plays a guitar.",
                                                      "text_pair": "A man plays music."},
                                                     {"task": "sst2", "text": "dull"}]}}}}}}


def openapi_document(app) -> dict:
    """The app's OpenAPI document: FastAPI's, plus the /predict body's schema (its handler reads the body itself)."""
    from fastapi.openapi.utils import get_openapi

    from bitfit_exp.serving.api_models import PredictRequest

    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        body = PredictRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas = document.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(body.pop("$defs", {}))
        schemas["PredictRequest"] = body
        app.openapi_schema = document
    return app.openapi_schema


def create_app(engine: MultiTaskEngine, window_ms: float = 5.0, max_items: int = 1024,
               max_body_bytes: int = 16 * 2**20, max_queued_rows: int = 65536):
    """The FastAPI app serving `engine`: /health, /tasks, /predict (see the module docstring), /openapi.json and
    /docs. The handlers take the raw request and answer JSONResponses themselves: FastAPI routes and documents them
    (bitfit_exp.serving.api_models) but parses no body, so every limit and one-line error stays as it is."""
    from fastapi import FastAPI
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse

    import bitfit_exp
    from bitfit_exp.serving.api_models import Health, Predictions, Tasks, responses
    from bitfit_exp.serving.api_page import render

    batcher = Batcher(engine, window_ms / 1000, engine.max_batch, max_queued_rows)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "model": engine.name_or_path, "model_fingerprint": engine.fingerprint,
                             "tasks": len(engine.patches), "forward_passes": engine.forward_passes,
                             "device": str(engine.device)})

    async def tasks(request: Request):
        return JSONResponse({"tasks": [p.describe() for p in engine.patches]})

    async def predict(request: Request):
        try:
            rows = await run_in_threadpool(prepare, engine, await read_body(request, max_body_bytes), max_items)
        except BadInput as e:
            return error(str(e), e.status)
        try:
            logits, info = await batcher.submit(rows)
        except BadInput as e:
            return error(str(e), e.status)
        except Exception as e:
            return error(f"internal error: {first_line(e)}", 500)
        return JSONResponse({"predictions": [engine.result(r, v) for r, v in zip(rows, logits, strict=True)],
                             "batch": info})

    async def openapi(request: Request):
        return JSONResponse(openapi_document(app))

    async def docs(request: Request):
        return HTMLResponse(render(openapi_document(app)))

    async def http_error(request, e: HTTPException):  # unknown route (404), wrong method (405): JSON too
        return error(f"{e.detail}: {request.method} {request.url.path} (routes: {ROUTES})", e.status_code)

    async def client_gone(request, e: ClientDisconnect):  # left, or was closed (--request-timeout), mid-body
        return error("the client went away before its whole body arrived", 400)  # sent nowhere, logged nowhere

    @asynccontextmanager
    async def lifespan(app):
        task = asyncio.create_task(batcher.run())
        yield
        task.cancel()
        batcher.worker.shutdown(wait=False)

    app = FastAPI(title="bitfit-serve", version=bitfit_exp.__version__, description=DESCRIPTION, lifespan=lifespan,
                  openapi_url=None, docs_url=None, redoc_url=None,
                  exception_handlers={HTTPException: http_error, ClientDisconnect: client_gone})
    app.add_api_route("/health", health, methods=["GET"], response_model=Health, responses=responses("health"),
                      response_description="the server is up",
                      summary="Status, the served checkpoint and its fingerprint, forward passes so far")
    app.add_api_route("/tasks", tasks, methods=["GET"], response_model=Tasks, responses=responses("tasks"),
                      response_description="the served tasks, in the order they were given",
                      summary="Every served task: name, labels, text fields, max_length, where it came from")
    app.add_api_route("/predict", predict, methods=["POST"], response_model=Predictions,
                      responses=responses("predict"), openapi_extra={"requestBody": PREDICT_BODY},
                      response_description="one prediction per item, in order, and how the batch ran",
                      summary="Predictions for one item or a mixed list of items of any served tasks")
    for path, endpoint in (("/health", health), ("/tasks", tasks)):  # HEAD as Starlette's GET routes answer it
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)
    app.add_api_route("/openapi.json", openapi, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    return app


DESCRIPTION = ("BitFit task patches and peft BEFT adapters over one frozen backbone: rows of different tasks share "
               "one forward pass. Every error is a one-line JSON {\"error\": ...}; a path that is no route is "
               "a 404 and a route asked with another method a 405, both listing the routes.")
