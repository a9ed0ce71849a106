"""The SDK's event follower on websockets' reconnecting iterator: resumes after the last event, stops for good on a
refused key. A small WebSocket server plays the dashboard's stream protocol, to drop connections at chosen points."""

import json
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from comfybatch.client._events import follow_events
from comfybatch.client.errors import AuthenticationFailed, DashboardUnavailable

pytestmark = pytest.mark.anyio
Handler = Callable[[ServerConnection], Coroutine[Any, Any, None]]


def _event(seq: int, type_: str = "item.completed", state: str | None = None) -> str:
    return json.dumps({"seq": seq, "occurred": "2026-01-01T00:00:00+00:00", "type": type_, "state": state})


@asynccontextmanager
async def _dashboard(handler: Handler, **options: Any) -> AsyncIterator[str]:
    server: Server
    async with serve(handler, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/api/batches/b/events"


async def _follow(url: str, *, max_reconnects: int = 3) -> list[int]:
    events = follow_events(url, request="WS test", api_key="key", after=0, open_timeout_s=5,
                           max_reconnects=max_reconnects)  # fmt: skip
    return [event.seq async for event in events]


async def test_a_dropped_stream_reopens_after_the_last_event_and_hands_none_out_twice() -> None:
    """Dropped (1011) after events 1 and 2, the stream reopens with `after=2`; a replayed 2 is not handed out again."""
    paths: list[str] = []

    async def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        paths.append(ws.request.path)
        await ws.recv()  # the auth message
        if len(paths) == 1:
            await ws.send(_event(1))
            await ws.send(_event(2))
            await ws.close(1011, "events unavailable, reconnect")
            return
        await ws.send(_event(2))
        await ws.send(_event(3, "run.completed", "COMPLETED"))
        await ws.close(1000, "batch ended")

    async with _dashboard(handler) as url:
        seqs = await _follow(url)

    assert seqs == [1, 2, 3]
    assert paths == ["/api/batches/b/events?after=0", "/api/batches/b/events?after=2"]


async def test_a_refused_key_on_the_open_stream_is_not_retried() -> None:
    """A 4401 close ends the stream with `AuthenticationFailed` at once: one connection, no reconnect."""
    opened: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        opened.append(1)
        await ws.close(4401, "a valid API key is required")

    async with _dashboard(handler) as url:
        with pytest.raises(AuthenticationFailed):
            await _follow(url)

    assert len(opened) == 1


async def test_a_refused_handshake_is_not_retried() -> None:
    """A handshake answered 403 (a proxy refusing the key) ends the stream with `AuthenticationFailed` at once."""
    asked: list[int] = []

    def refuse(_ws: ServerConnection, _request: Request) -> Response:
        asked.append(1)
        return Response(403, "Forbidden", Headers(), b"forbidden")

    async def handler(_ws: ServerConnection) -> None:
        raise AssertionError("never opened")

    async with _dashboard(handler, process_request=refuse) as url:
        with pytest.raises(AuthenticationFailed) as caught:
            await _follow(url)

    assert caught.value.status_code == 403
    assert len(asked) == 1


async def test_drops_without_progress_give_up_after_max_reconnects() -> None:
    """A server that accepts and closes before any event counts as a drop each time: past `max_reconnects` the
    stream ends with `DashboardUnavailable` naming where to resume."""
    opened: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        opened.append(1)
        await ws.close(1011, "events unavailable, reconnect")

    async with _dashboard(handler) as url:
        with pytest.raises(DashboardUnavailable) as caught:
            await _follow(url, max_reconnects=2)

    assert len(opened) == 3
    assert "closed with 1011" in str(caught.value)
    assert "resume with after=0" in str(caught.value)
