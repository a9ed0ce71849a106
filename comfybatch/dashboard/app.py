"""`create_app`: the dashboard API with its settings and launcher injected."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from comfybatch.dashboard.events import EventHub
from comfybatch.dashboard.guard import ApiGuard
from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.routes import batches, images, meta, stream, uploads
from comfybatch.errors import BatchRequestError, ComfyBatchError
from comfybatch.settings import Settings, get_settings

logger = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).resolve().parent / "static"


_RETRY_AFTER_S = "5"
_UNAVAILABLE = 503


async def _our_error(_request: Request, exc: Exception) -> JSONResponse:
    """Every `ComfyBatchError` answers the status its class carries; outages say when to try again."""
    body: dict[str, object] = {"detail": str(exc)}
    if isinstance(exc, BatchRequestError) and exc.problems:
        body["problems"] = [{"message": p.message, "field": p.field, "row": p.row, "column": p.column}
                            for p in exc.problems]  # fmt: skip
    status_code = exc.http_status if isinstance(exc, ComfyBatchError) else 400
    headers = {"Retry-After": _RETRY_AFTER_S} if status_code == _UNAVAILABLE else None
    return JSONResponse(body, status_code=status_code, headers=headers)


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
    app.add_middleware(  # outermost: refusals carry CORS headers too, so a browser can read them
        CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key"],
    )  # fmt: skip
    app.add_exception_handler(ComfyBatchError, _our_error)
    app.add_exception_handler(Exception, _internal)
    for module in (batches, images, stream, uploads, meta):
        app.include_router(module.router)
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="page")  # last: the API routes come first
    return app
