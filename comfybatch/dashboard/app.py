"""`create_app`: the dashboard API with its settings and launcher injected."""

import logging
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from comfybatch.dashboard.events import EventHub
from comfybatch.dashboard.guard import ApiGuard
from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.metrics import ApiLatency
from comfybatch.dashboard.routes import archive, batches, images, meta, stream, uploads, usage
from comfybatch.errors import BatchRequestError, ComfyBatchError, WorkflowError
from comfybatch.models import BatchSpec
from comfybatch.problems import problems_of, validation_problems
from comfybatch.settings import Settings, get_settings

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


_RETRY_AFTER_S = "5"
_UNAVAILABLE = 503
_ECHO_CHARS = 200  # of an invalid value echoed in a 422: a 5 MB prompt is not sent back
_ECHO_ITEMS = 20
# What any /api route may answer besides its success (documented in the OpenAPI schema; one handler sends them).
# `problems` (400 and 422): each problem's sentence and where it points (comfybatch/problems.py `Problem`).
_PROBLEM = {"type": "object", "properties": {
    "message": {"type": "string", "description": "The sentence a person reads, its place included."},
    "reason": {"type": "string", "description": "The sentence without the field, row or column it starts with."},
    "field": {"type": ["string", "null"], "description": "Request field as sent, e.g. defaults.width, prompts[1]."},
    "item": {"type": ["integer", "null"], "description": "1-based position in the list the field indexes."},
    "row": {"type": ["integer", "null"], "description": "Sheet row as a spreadsheet shows it (header = 1)."},
    "column": {"type": ["string", "null"]}, "node": {"type": ["string", "null"], "description": "Node id."},
    "node_title": {"type": ["string", "null"]}, "input": {"type": ["string", "null"], "description": "Node input."},
}}  # fmt: skip
_REFUSAL = {"application/json": {"schema": {"type": "object", "required": ["detail"], "properties": {
    "detail": {}, "problems": {"type": "array", "items": _PROBLEM}}}}}  # fmt: skip
API_REFUSALS: dict[int | str, dict[str, Any]] = {
    status: {"description": description, "content": _REFUSAL}
    for status, description in (
        (400, "The request is wrong: the message names the field, row, column or node"),
        (401, "A valid API key is required"),
        (404, "No such batch, item or file"),
        (409, "The batch's name or state forbids this"),
        (413, "The body, or the run parameters it makes, is over the limit the message names"),
        (415, "The body must be sent with the content type the message names"),
        (429, "The key's image quota is used up"),
        (503, "The platform cannot take work now; try again after Retry-After seconds"),
    )
}


async def _our_error(_request: Request, exc: Exception) -> JSONResponse:
    """Every `ComfyBatchError` answers the status its class carries; outages say when to try again."""
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, BatchRequestError | WorkflowError) and exc.problems:
        # The sentence (`message`, place included) and where it points, so a page can highlight the field or node.
        body["problems"] = [problem.as_json() for problem in problems_of(exc)]
    status_code = exc.http_status if isinstance(exc, ComfyBatchError) else 400
    headers = {"Retry-After": _RETRY_AFTER_S} if status_code == _UNAVAILABLE else None
    return JSONResponse(body, status_code=status_code, headers=headers)


async def _invalid_request(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, always serialisable: NaN and infinities echoed as text, long inputs shortened."""
    errors = list(exc.errors()) if isinstance(exc, RequestValidationError) else []
    # FastAPI's list stays in `detail` (clients read `loc`), each `msg` the sentence a person reads; `problems` as in
    # every other 4xx. `loc[0]` (body, query, header) is dropped from the field a person reads.
    problems = [validation_problems([error], skip=1, fields=BatchSpec.model_fields)[0] for error in errors]
    detail = [_echo({**error, "msg": problem.message, "ctx": _shown_ctx(error)})
              for error, problem in zip(errors, problems, strict=True)]  # fmt: skip
    return JSONResponse({"detail": detail, "problems": [problem.as_json() for problem in problems]}, status_code=422)


def _shown_ctx(error: Any) -> Any:
    """pydantic's `ctx` without a pattern: the sentence says in words what a name may hold, and no user reads regex."""
    ctx = error.get("ctx")
    return {key: value for key, value in ctx.items() if key != "pattern"} if isinstance(ctx, dict) else ctx


def _echo(value: Any, depth: int = 0) -> Any:
    """`value` as JSON data a client can read back: finite numbers, short text, few items, no objects."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf": JSON has no such numbers, and Starlette refuses to send them
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value if len(value) <= _ECHO_CHARS else f"{value[:_ECHO_CHARS]}… ({len(value):,} characters)"
    if depth > 4:
        return "…"
    if isinstance(value, dict):
        shown = {str(key): _echo(item, depth + 1) for key, item in list(value.items())[:_ECHO_ITEMS]}
        return shown | ({"…": f"{len(value) - _ECHO_ITEMS} more"} if len(value) > _ECHO_ITEMS else {})
    if isinstance(value, list | tuple):
        items = [_echo(item, depth + 1) for item in list(value)[:_ECHO_ITEMS]]
        return items + ([f"… {len(value) - _ECHO_ITEMS} more"] if len(value) > _ECHO_ITEMS else [])
    return _echo(str(value), depth)  # exceptions in `ctx`, bytes, enums


async def _internal(_request: Request, exc: Exception) -> JSONResponse:
    logger.error("unhandled %s in the dashboard", type(exc).__name__)  # no message: it may hold a secret
    return JSONResponse({"detail": "internal error"}, status_code=500)


def create_app(settings: Settings | None = None, launcher: Launcher | None = None) -> FastAPI:
    """The dashboard app; `launcher` is the seam to Prefect and the output store."""
    settings = settings or get_settings()
    if settings.api_auth_disabled:
        logger.warning("API authentication is DISABLED: anyone who can reach the dashboard can start batches")
    launcher = launcher or Launcher(settings)

    hub = EventHub(launcher.api_url, launcher.history)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        hub.start()  # subscribed before the first client asks, so no batch needs its history read back
        launcher.open()
        yield
        await hub.stop()
        await launcher.aclose()

    app = FastAPI(title="comfybatch", summary="Start ComfyUI batches and read their results.", lifespan=lifespan)
    app.state.settings = settings
    app.state.launcher = launcher
    app.state.hub = hub
    app.add_middleware(ApiGuard, settings=settings)
    app.add_middleware(ApiLatency, metrics=hub.metrics)  # around the guard: refusals are timed too
    app.add_middleware(  # outermost: refusals carry CORS headers too, so a browser can read them
        CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
    )  # fmt: skip
    app.add_exception_handler(ComfyBatchError, _our_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(Exception, _internal)
    for module in (batches, images, archive, stream, uploads, usage, meta):
        app.include_router(module.router, responses=API_REFUSALS)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")  # last: the API routes come first
    return app
