"""The typed request and response bodies of `bitfit-serve`'s HTTP API and every status code each route answers:
what `/openapi.json` (OpenAPI 3.1, built by FastAPI) and the `/docs` page describe.

The handlers (bitfit_exp.serving.server) read and check request bodies themselves, so the body limits (size while it
streams in, item count, text length) and the one-line `{"error": ...}` answers stay theirs; these models are the
contract those answers keep, checked against real answers in tests/test_serve_openapi.py.

>>> sorted(Prediction.model_json_schema()["anyOf"][0]["$ref"].split("/")[-1:])
['Classification']
>>> sorted(ROUTE_ERRORS["predict"])
[400, 404, 405, 408, 413, 422, 500, 503]
"""

from pydantic import BaseModel, ConfigDict, Field, RootModel


class Closed(BaseModel):
    """No keys beyond the documented ones (additionalProperties: false), so a schema check catches an undocumented
    answer."""

    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------------- requests


class Item(Closed):
    """One input of one served task."""

    task: str | None = Field(None, description="a served task's name (GET /tasks); may be omitted in a list whose "
                                               "top-level 'task' gives it", examples=["sst2"])
    text: str = Field(description="the text, or the first text of a pair task", examples=["a gem of a film"])
    text_pair: str | None = Field(None, description="the second text: required by pair tasks, refused by others")


class Items(Closed):
    """Several items, of any served tasks, run together."""

    items: list[Item] = Field(min_length=1, description="at most --max-items (default 1024)")
    task: str | None = Field(None, description="the task of items that name none")


class PredictRequest(RootModel[Item | Items]):
    """One item, or {"items": [...]}."""


# ---------------------------------------------------------------------------------------------------- answers


class Classification(Closed):
    """A classification task's answer for one item."""

    task: str
    label: str = Field(description="the predicted label's name (or its id when the task has no label names)")
    label_id: int = Field(ge=0)
    probabilities: dict[str, float] = Field(description="softmax of the logits, by label name, in the task's "
                                                        "label order")
    logits: list[float] = Field(min_length=2)
    truncated: str = Field(None, description="present (never null) when the input was cut to the task's max_length "
                                             "tokens, as in training")


class Regression(Closed):
    """A regression task's answer (one output, e.g. STS-B)."""

    task: str
    score: float
    logits: list[float] = Field(min_length=1, max_length=1)
    truncated: str = Field(None, description="present (never null) when the input was cut to the task's max_length "
                                             "tokens")


class Prediction(RootModel[Classification | Regression]):
    """One item's answer."""


class Batch(Closed):
    """What the request was run with: the requests and rows the batching window collected and their forward
    passes."""

    requests: int = Field(ge=1)
    rows: int = Field(ge=1)
    tasks: int = Field(ge=1)
    forward_passes: int = Field(ge=0)


class Predictions(Closed):
    predictions: list[Prediction] = Field(description="one per item, in order")
    batch: Batch


class Health(Closed):
    status: str = Field(examples=["ok"])
    model: str = Field(description="the served checkpoint")
    model_fingerprint: str
    tasks: int = Field(ge=1)
    forward_passes: int = Field(ge=0)
    device: str


class Task(Closed):
    """A served task: a BitFit run's patch or a peft BEFT adapter."""

    name: str = Field(description="what requests name it by")
    task: str
    method: str
    labels: list[str] = Field(description="label names in the order of the logits; empty for regression")
    regression: bool
    metric: str
    text_fields: list[str] = Field(min_length=1, max_length=2)
    pair: bool
    max_length: int = Field(ge=1, description="inputs are cut to this many tokens, as in training")
    lr: float | None
    seed: int | None
    epoch: int | None
    status: str
    patch: str = Field(description="the patch file, or the adapter folder")
    source: str = Field(None, description="present for an adapter folder: 'peft BEFT adapter'")
    base: str = Field(None, description="present for an adapter folder: its base_model_name_or_path")


class Tasks(Closed):
    tasks: list[Task]


class Error(Closed):
    """Every 4xx and 5xx answer: one line saying what was wrong and, where it helps, how to fix it."""

    error: str = Field(examples=["item 0: unknown task 'qqp' (serving: rte, sst2)"])


# ---------------------------------------------------------------------------------------------------- status codes

WRONG_METHOD = "the route exists but not for this method"
TIMEOUT = "the request (headers and body) did not arrive within --request-timeout; the connection is closed"
BUSY_CONNECTIONS = "more than --max-connections connections are open; the connection is closed (retry later)"

ROUTE_ERRORS: dict[str, dict[int, str]] = {
    "health": {405: WRONG_METHOD, 408: TIMEOUT, 503: BUSY_CONNECTIONS},
    "tasks": {405: WRONG_METHOD, 408: TIMEOUT, 503: BUSY_CONNECTIONS},
    "predict": {
        400: "the body is not JSON (or nested too deeply), not an object, has an empty or non-list 'items', or the "
             "client went away before the whole body arrived",
        404: "an item names a task that is not served",
        405: WRONG_METHOD,
        408: TIMEOUT,
        413: "the body is larger than --max-body-mb (refused before it is read), holds more than --max-items items, "
             "or a text is longer than --max-chars characters",
        422: "an item is malformed: no task or text, a non-string value, a pair task without text_pair (or a "
             "single-text task with one), text that is not valid Unicode",
        500: "the model failed on this batch (the server goes on serving)",
        503: "the server is busy: --max-queued-rows rows already wait for the model, or " + BUSY_CONNECTIONS,
    },
}


def responses(route: str) -> dict[int, dict]:
    """FastAPI's `responses=` for a route: each error status with its description and the Error body."""
    return {status: {"model": Error, "description": text} for status, text in ROUTE_ERRORS[route].items()}

