"""ASGI guard in front of every `/api` HTTP route: the key first, then the body's type and size.

Before FastAPI parses anything, so a caller without a key learns nothing about the request's shape,
and a wrong content type or a huge body is refused without being read into memory.
"""

from collections.abc import AsyncIterator

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfybatch.dashboard.auth import CHALLENGE, KEY_REQUIRED, bearer_key_name, remember_key_name
from comfybatch.dashboard.body import read_limited
from comfybatch.errors import RequestTooLarge
from comfybatch.settings import Settings

JSON_BODIES = frozenset({"/api/batches", "/api/validate"})


class ApiGuard:
    """401 without a valid key; 415 / 413 for JSON routes sent something else or too much.

    Where an HTTP request's key is checked: routes read the key's name it stores (`KeyName`), which checks the
    header itself only for a request the guard did not see.
    """

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/") or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if (key_name := bearer_key_name(headers, self.settings)) is None:
            await JSONResponse({"detail": KEY_REQUIRED}, 401, CHALLENGE)(scope, receive, send)
            return
        remember_key_name(scope, key_name)
        if scope["method"] == "POST" and scope["path"].rstrip("/") in JSON_BODIES:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                await JSONResponse({"detail": f"send the request as application/json, not {media or '(none)'!r}"},
                                   415)(scope, receive, send)  # fmt: skip
                return
            try:
                body = await read_limited(_chunks(receive), headers, limit=self.settings.max_request_bytes,
                                          what="a request")  # fmt: skip
            except RequestTooLarge as exc:  # outside FastAPI's handlers, so answered here
                await JSONResponse({"detail": str(exc)}, exc.http_status)(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)


async def _chunks(receive: Receive) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; a disconnect ends them early."""
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return
        yield message.get("body", b"")
        more = message.get("more_body", False)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # later reads wait for the client's disconnect, as usual
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
