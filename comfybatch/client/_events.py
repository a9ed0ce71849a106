"""Follow `WS /api/batches/{id}/events`, reconnecting with `after=<last seq>` so no event is lost or repeated.

websockets' reconnecting iterator (`async for ws in connect(...)`) opens the connections: it backs off between
failed openings, and `_Resume.retry` (its `process_exception`) says which failures are worth another try. This
module counts drops, moves `after` on and turns close codes and handshake answers into the SDK's errors.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pydantic
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from comfybatch.client.errors import AuthenticationFailed, DashboardUnavailable, NotFound, UnexpectedResponse
from comfybatch.client.models import BatchEvent

CLOSE_NORMAL, CLOSE_UNAUTHORIZED, CLOSE_NOT_FOUND = 1000, 4401, 4404  # the dashboard's stream.py
_MAX_PAUSE_S = 5.0


@dataclass
class _Resume:
    """Where a followed stream stands: the last event handed out, and the drops in a row since the last frame."""

    request: str
    max_reconnects: int
    last: int
    drops: int = 0
    ended: bool = False  # the run's end was seen: a drop now loses nothing

    def url(self, ws_url: str) -> str:
        return f"{ws_url}?after={self.last}"

    def dropped(self, reason: str) -> DashboardUnavailable | None:
        """Count one drop: the error that ends the stream once there were more than `max_reconnects` in a row."""
        self.drops += 1
        if self.drops <= self.max_reconnects:
            return None
        return DashboardUnavailable(f"event stream lost {self.drops} times in a row ({reason}); resume with "
                                    f"after={self.last}", request=self.request)  # fmt: skip

    def retry(self, exc: Exception) -> Exception | None:
        """websockets' `process_exception` for a failed opening: None opens again after its back-off; an error
        ends the stream (a refused key or batch, `max_reconnects` reached, anything but a network or handshake
        failure)."""
        if isinstance(exc, InvalidStatus):  # the handshake was answered with HTTP, not a WebSocket
            status = exc.response.status_code
            if status in (401, 403):
                return AuthenticationFailed("a valid API key is required", request=self.request, status_code=status)
            if status == 404:
                return NotFound("no events route for this batch", request=self.request, status_code=status)
            reason = f"handshake answered {status}"
        elif isinstance(exc, OSError | TimeoutError | InvalidHandshake):
            reason = type(exc).__name__
        else:
            return exc
        return self.dropped(reason)


async def follow_events(
    ws_url: str, *, request: str, api_key: str | None, after: int, open_timeout_s: float, max_reconnects: int
) -> AsyncIterator[BatchEvent]:
    """Yield events numbered after `after` until the server ends the stream (1000, once the run has ended).

    Raises:
        AuthenticationFailed (4401), NotFound (4404), DashboardUnavailable (`max_reconnects` drops in a row),
        UnexpectedResponse (a frame that is not an event).
    """
    resume = _Resume(request, max_reconnects, after)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    connector = connect(resume.url(ws_url), additional_headers=headers, open_timeout=open_timeout_s,
                        process_exception=resume.retry)  # fmt: skip
    async for ws in connector:
        async with ws:  # closed at once however this generator is left, not when the iterator is next resumed
            try:
                if api_key:  # a wrong header key makes the server wait for this message; it fails fast instead
                    await ws.send(json.dumps({"type": "auth", "token": api_key}))
                async for frame in ws:
                    event = _parse(frame, request)
                    resume.drops = 0
                    if event.seq <= resume.last:
                        continue  # the server replays from `after`; never hand a number out twice
                    resume.last, resume.ended = event.seq, resume.ended or event.ends_run
                    yield event
                if ws.close_code == CLOSE_NORMAL:
                    return
                reason = f"closed with {ws.close_code}"
            except ConnectionClosed as exc:
                reason = _closed(exc, request)
        if resume.ended:
            return
        if (error := resume.dropped(reason)) is not None:
            raise error
        connector.uri = resume.url(ws_url)  # read at each opening: the next one resumes after the last event
        # websockets opens again at once after a connection that worked; a server that accepts and then closes
        # (1011: Prefect unreachable behind it) is given a moment before that.
        await asyncio.sleep(min(0.25 * 2**resume.drops, _MAX_PAUSE_S))


def _closed(exc: ConnectionClosed, request: str) -> str:
    """Why an open stream closed, as words for `DashboardUnavailable`.

    Raises:
        AuthenticationFailed (4401), NotFound (4404): retrying cannot help.
    """
    code = exc.rcvd.code if exc.rcvd is not None else None
    if code == CLOSE_UNAUTHORIZED:
        raise AuthenticationFailed("a valid API key is required", request=request, status_code=code) from None
    if code == CLOSE_NOT_FOUND:
        raise NotFound(exc.rcvd.reason if exc.rcvd else "no such batch", request=request, status_code=code) from None
    return f"closed with {code}" if code is not None else "connection dropped"


def _parse(frame: str | bytes, request: str) -> BatchEvent:
    try:
        return BatchEvent.model_validate_json(frame)
    except pydantic.ValidationError as exc:
        raise UnexpectedResponse(f"a frame is not an event ({exc.error_count()} problem(s))", request=request) from None
