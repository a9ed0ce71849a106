"""ASGI guard in front of every `/api` HTTP route: the key first, then the body's type and size.

Before FastAPI parses anything, so a caller without a key learns nothing about the request's shape,
and a wrong content type or a huge body is refused without being read into memory.
"""

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from comfybatch.dashboard.deps import key_name_of
from comfybatch.settings import Settings

JSON_BODIES = frozenset({"/api/batches", "/api/validate"})


class ApiGuard:
    """401 without a valid key; 415 / 413 for JSON routes sent something else or too much."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/api/") or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if key_name_of(token if scheme.lower() == "bearer" else "", self.settings) is None:
            refusal = JSONResponse({"detail": "a valid API key is required"}, 401, {"WWW-Authenticate": "Bearer"})
            await refusal(scope, receive, send)
            return
        if scope["method"] == "POST" and scope["path"].rstrip("/") in JSON_BODIES:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media != "application/json":
                await JSONResponse({"detail": f"send the request as application/json, not {media or '(none)'!r}"},
                                   415)(scope, receive, send)  # fmt: skip
                return
            body = await self._body(headers, receive)
            if body is None:
                limit = self.settings.max_request_bytes
                await JSONResponse({"detail": f"a request may have at most {limit} bytes"}, 413)(scope, receive, send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _body(self, headers: Headers, receive: Receive) -> bytes | None:
        """The whole body, or None as soon as it passes the limit (whatever Content-Length claims)."""
        limit = self.settings.max_request_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return None
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()  # later reads wait for the client's disconnect, as usual
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay
