"""One ComfyUI `/ws` connection under its own client id."""

import asyncio
import json
import uuid
from types import TracebackType
from typing import Self

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from comfybatch.comfy.events import ComfyEvent, parse_frame
from comfybatch.errors import ServerUnavailable

_MAX_FRAME_BYTES = 64 << 20  # previews of large images arrive as one binary frame


class EventSocket:
    """Receives the events of prompts queued with `client_id`.

    ComfyUI sends execution events only to the socket whose id submitted the prompt, drops
    messages for ids with no socket, and sends no heartbeat: we ping (comfyui-protocol.md §2).
    """

    def __init__(
        self, ws_url: str, server: str, *, headers: dict[str, str] | None = None, ping_interval_s: float = 5.0
    ) -> None:
        self.client_id = uuid.uuid4().hex
        self.server = server
        self._url = f"{ws_url}?clientId={self.client_id}"
        self._headers = headers or {}
        self._ping_interval_s = ping_interval_s
        self._ws: ClientConnection | None = None

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def open(self, *, timeout_s: float = 10.0) -> None:
        """Connect and announce preview metadata support (previews then carry their prompt_id).

        Raises:
            ServerUnavailable.
        """
        try:
            self._ws = await connect(
                self._url, additional_headers=self._headers, open_timeout=timeout_s, max_size=_MAX_FRAME_BYTES,
                ping_interval=self._ping_interval_s, ping_timeout=self._ping_interval_s, close_timeout=1.0,
            )  # fmt: skip
            flags = {"type": "feature_flags", "data": {"supports_preview_metadata": True}}
            await self._ws.send(json.dumps(flags))
        except (OSError, TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            raise ServerUnavailable(f"cannot open {self._url.split('?')[0]}: {exc!r}", server=self.server) from exc

    async def close(self) -> None:
        if self._ws is not None:
            ws, self._ws = self._ws, None
            await ws.close()

    async def receive(self, timeout_s: float) -> ComfyEvent | None:
        """The next understood event, or None if nothing arrived within `timeout_s`.

        Raises:
            ServerUnavailable when the connection is closed or broken.
        """
        if self._ws is None:
            raise ServerUnavailable("event socket is not open", server=self.server)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(timeout_s, 0.0)
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    frame = await self._ws.recv()
            except TimeoutError:
                return None
            except ConnectionClosed as exc:
                raise ServerUnavailable(f"event socket closed: {exc!r}", server=self.server) from exc
            if (event := parse_frame(frame)) is not None:
                return event
