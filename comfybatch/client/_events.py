"""Follow `WS /api/batches/{id}/events`, reconnecting with `after=<last seq>` so no event is lost or repeated."""

import asyncio
import json
from collections.abc import AsyncIterator

import pydantic
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from comfybatch.client.errors import AuthenticationFailed, DashboardUnavailable, NotFound, UnexpectedResponse
from comfybatch.client.models import BatchEvent

CLOSE_NORMAL, CLOSE_UNAUTHORIZED, CLOSE_NOT_FOUND = 1000, 4401, 4404  # the dashboard's stream.py
_MAX_BACKOFF_S = 5.0


async def follow_events(
    ws_url: str, *, request: str, api_key: str | None, after: int, open_timeout_s: float, max_reconnects: int
) -> AsyncIterator[BatchEvent]:
    """Yield events numbered after `after` until the server ends the stream (1000, once the run has ended).

    Raises:
        AuthenticationFailed (4401), NotFound (4404), DashboardUnavailable (`max_reconnects` drops in a row),
        UnexpectedResponse (a frame that is not an event).
    """
    last, drops, ended = after, 0, False
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    while True:
        try:
            async with connect(f"{ws_url}?after={last}", additional_headers=headers, open_timeout=open_timeout_s) as ws:
                if api_key:  # a wrong header key makes the server wait for this message; it fails fast instead
                    await ws.send(json.dumps({"type": "auth", "token": api_key}))
                async for frame in ws:
                    event = _parse(frame, request)
                    drops = 0
                    if event.seq <= last:
                        continue  # the server replays from `after`; never hand a number out twice
                    last, ended = event.seq, ended or event.ends_run
                    yield event
                if ws.close_code == CLOSE_NORMAL:
                    return
                reason = f"closed with {ws.close_code}"
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            if code == CLOSE_UNAUTHORIZED:
                raise AuthenticationFailed("a valid API key is required", request=request, status_code=code) from None
            if code == CLOSE_NOT_FOUND:
                raise NotFound(
                    exc.rcvd.reason if exc.rcvd else "no such batch", request=request, status_code=code
                ) from None
            reason = f"closed with {code}" if code is not None else "connection dropped"
        except InvalidStatus as exc:  # the handshake was answered with HTTP, not a WebSocket
            status = exc.response.status_code
            if status in (401, 403):
                raise AuthenticationFailed("a valid API key is required", request=request, status_code=status) from None
            if status == 404:
                raise NotFound("no events route for this batch", request=request, status_code=status) from None
            reason = f"handshake answered {status}"
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            reason = type(exc).__name__
        if ended:
            return  # the run's end was seen: a drop now loses nothing
        drops += 1
        if drops > max_reconnects:
            raise DashboardUnavailable(f"event stream lost {drops} times in a row ({reason}); resume with after={last}",
                                       request=request)  # fmt: skip
        await asyncio.sleep(min(0.25 * 2**drops, _MAX_BACKOFF_S))


def _parse(frame: str | bytes, request: str) -> BatchEvent:
    try:
        return BatchEvent.model_validate_json(frame)
    except pydantic.ValidationError as exc:
        raise UnexpectedResponse(f"a frame is not an event ({exc.error_count()} problem(s))", request=request) from None
