"""One ComfyUI `/ws` connection per server, shared by every prompt the process follows there.

Events are routed to each prompt's follower by `prompt_id`. A dropped connection is reported to every
follower of that connection (each then reconciles its prompt through `/history`), and websockets'
reconnecting `connect()` iterator opens the next one.
"""

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Final, Literal, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from comfybatch.comfy.events import ComfyEvent, parse_frame
from comfybatch.errors import ServerUnavailable

_MAX_FRAME_BYTES = 64 << 20  # previews of large images arrive as one binary frame
_SHORT_LIFE_S = 1.0  # a connection that ends sooner did not really work: wait this long before the next
_UNROUTED_TYPES = frozenset({"status", "feature_flags"})  # about the socket or the queue, not one prompt
_DROPPED: Final = object()
logger = logging.getLogger(__name__)

SocketState = Literal["connecting", "up", "down"]


class _GiveUp(Exception):
    """Ends the reconnect loop: nobody needs the socket any more."""


class PromptEvents:
    """The events of one prompt, as the hub routes them to its follower.

    `client_id` is the id to submit the prompt with; None when the server's socket is down: the
    prompt is then followed by polling.
    """

    def __init__(self, server: str, client_id: str | None, generation: int) -> None:
        self.server = server
        self.client_id = client_id
        self.generation = generation
        self._queue: asyncio.Queue[ComfyEvent | object] = asyncio.Queue()

    def put(self, item: ComfyEvent | object) -> None:
        self._queue.put_nowait(item)

    async def receive(self, timeout_s: float) -> ComfyEvent | None:
        """The next event of this prompt, or None if nothing arrived within `timeout_s`.

        Raises:
            ServerUnavailable when the connection the prompt was submitted on has dropped.
        """
        try:
            async with asyncio.timeout(max(timeout_s, 0.0)):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if isinstance(item, ComfyEvent):
            return item
        self._queue.put_nowait(item)  # the drop stays visible to later reads
        raise ServerUnavailable("event socket dropped", server=self.server)


class EventHub:
    """The server's one event socket, and the followers of the prompts in flight there.

    Opened on first use, closed once nothing has needed it for `linger_s` (then `on_idle` runs).
    ComfyUI sends a prompt's events only to the socket whose client id submitted it, drops messages
    for ids with no socket, and sends no heartbeat: we ping (comfyui-protocol.md §2).
    """

    def __init__(
        self, ws_url: str, server: str, *, headers: dict[str, str] | None = None, ping_interval_s: float = 5.0,
        open_timeout_s: float = 10.0, linger_s: float = 30.0, on_idle: Callable[[], Awaitable[None]] | None = None,
    ) -> None:  # fmt: skip
        self.server = server
        self._ws_url = ws_url
        self._headers = headers or {}
        self._ping_interval_s = ping_interval_s
        self._open_timeout_s = open_timeout_s
        self._linger_s = linger_s
        self._on_idle = on_idle
        self._followers: dict[str, PromptEvents] = {}
        self._holds = 0
        self._idle_since = time.monotonic()
        self._keeper: asyncio.Task[None] | None = None
        self.stopping = False  # the keeper decided to end: a session registry must hand out a new hub
        self.state: SocketState = "down"
        self._changed = asyncio.Event()  # replaced at every state change
        self._status = asyncio.Event()  # replaced after every `status` broadcast
        self._client_id: str | None = None
        self._generation = 0
        self._running: str | None = None  # the prompt executing for our client id (ComfyUI runs one at a time)
        self.connections = 0

    @property
    def client_id(self) -> str | None:
        """The id the server gave the open connection (None while down): a fresh one per connection."""
        return self._client_id

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        """Keep the socket open while the block runs (a borrowed session, a prompt followed by polling)."""
        self._holds += 1
        self._ensure_keeper()
        try:
            yield
        finally:
            self._release(hold=True)

    @contextlib.asynccontextmanager
    async def follow(self, prompt_id: str) -> AsyncIterator[PromptEvents]:
        """Route `prompt_id`'s events to the yielded follower; enter it before `POST /prompt`."""
        self._followers[prompt_id] = follower = PromptEvents(self.server, None, -1)  # wanted while we wait
        try:
            self._ensure_keeper()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._open_timeout_s):
                    while self.state == "connecting":
                        await self._changed.wait()
            follower.client_id, follower.generation = self._client_id, self._generation
            yield follower
        finally:
            self._release(prompt_id=prompt_id)

    async def wait_for_status(self, timeout_s: float) -> None:
        """Return at the next queue change the server broadcasts, or after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(timeout_s, 0.0)):
                await self._status.wait()

    async def close(self) -> None:
        """Close the socket now; followers still registered see it drop."""
        if self._keeper is not None and not self._keeper.done():
            self._keeper.cancel()  # its clean-up runs as for an idle end (it stays the current keeper)
            await asyncio.wait([self._keeper])

    # -- the keeper: one task per hub, alive while the socket is wanted -------------------------

    def _ensure_keeper(self) -> None:
        if self._keeper is None or self._keeper.done() or self.stopping:
            self.stopping = False
            self._set_state("connecting")
            loop = asyncio.get_running_loop()
            self._keeper = loop.create_task(self._keep(self._keeper), name=f"comfy-socket-{self.server}")

    def _release(self, *, hold: bool = False, prompt_id: str | None = None) -> None:
        if hold:
            self._holds -= 1
        if prompt_id is not None:
            del self._followers[prompt_id]
        if not self._wanted():
            self._idle_since = time.monotonic()

    def _wanted(self) -> bool:
        return bool(self._holds or self._followers)

    def _linger_left_s(self) -> float | None:
        return None if self._wanted() else self._idle_since + self._linger_s - time.monotonic()

    def _set_state(self, state: SocketState) -> None:
        self.state = state
        self._changed.set()
        self._changed = asyncio.Event()

    async def _keep(self, previous: asyncio.Task[None] | None) -> None:
        if previous is not None and not previous.done():
            await asyncio.wait([previous])  # a keeper that was just closing its socket
        try:
            await self._connect_and_serve()
        finally:
            current = self._keeper is asyncio.current_task()
            if current:
                self.stopping = True
                self._dropped("event socket closed")
                self._set_state("down")
            if self._on_idle is not None and current:
                await self._on_idle()

    async def _connect_and_serve(self) -> None:
        connections = connect(
            self._ws_url, additional_headers=self._headers, open_timeout=self._open_timeout_s,
            max_size=_MAX_FRAME_BYTES, ping_interval=self._ping_interval_s, ping_timeout=self._ping_interval_s,
            close_timeout=1.0, process_exception=self._connect_failed,
        )  # fmt: skip
        with contextlib.suppress(_GiveUp):
            async with contextlib.aclosing(cast(AsyncGenerator[ClientConnection], aiter(connections))) as attempts:
                async for ws in attempts:
                    opened = time.monotonic()
                    try:
                        await self._serve(ws)
                        return  # nothing needed the socket for `linger_s`
                    except ServerUnavailable as exc:
                        self._dropped(str(exc))
                    if not self._wanted():
                        self.stopping = True
                        return
                    self._set_state("connecting")
                    if time.monotonic() - opened < _SHORT_LIFE_S:
                        await asyncio.sleep(_SHORT_LIFE_S)  # accepted, then dropped at once: do not spin

    def _connect_failed(self, exc: Exception) -> Exception | None:
        """websockets' `process_exception`: retry (with its back-off) while the socket is wanted."""
        logger.info("[%s] event socket cannot connect: %r", self.server, exc)
        self._set_state("down")  # waiting followers stop waiting and poll instead
        if not self._wanted():
            self.stopping = True
            return _GiveUp()
        return None

    async def _serve(self, ws: ClientConnection) -> None:
        """Read frames until nothing needs the socket for `linger_s` (return) or it breaks (ServerUnavailable)."""
        try:
            await ws.send(json.dumps({"type": "feature_flags", "data": {"supports_preview_metadata": True}}))
            # 0.3.x drops the new registration when a re-used client id's old socket ends (comfyui-protocol.md
            # §2.5). So every connection lets the server choose a fresh id (the `sid` of its first `status`), and
            # prompts submitted under an earlier id are reconciled through /history, never re-attached.
            client_id = await self._hello(ws)
            self._generation += 1
            self._client_id, self._running = client_id, None
            self.connections += 1
            self._set_state("up")
            while True:
                try:
                    async with asyncio.timeout(self._linger_left_s()):
                        frame = await ws.recv()
                except TimeoutError:
                    if (left := self._linger_left_s()) is not None and left <= 0:
                        self.stopping = True  # decided with no await in between: nobody borrowed us meanwhile
                        return
                    continue
                if (event := parse_frame(frame)) is not None:
                    self._route(event)
        except (ConnectionClosed, TimeoutError) as exc:
            raise ServerUnavailable(f"event socket dropped: {exc!r}", server=self.server) from exc

    async def _hello(self, ws: ClientConnection) -> str:
        async with asyncio.timeout(self._open_timeout_s):
            while True:
                event = parse_frame(await ws.recv())
                if event is not None and event.type == "status" and isinstance(sid := event.data.get("sid"), str):
                    return sid

    def _route(self, event: ComfyEvent) -> None:
        if event.type in _UNROUTED_TYPES:
            if event.type == "status":
                self._status.set()
                self._status = asyncio.Event()
            return
        prompt_id = event.prompt_id
        if prompt_id is None:
            prompt_id = self._running  # text frames and plain previews name no prompt: they are the running one's
        elif event.shows_start:
            self._running = prompt_id
        if event.is_terminal and prompt_id == self._running:
            self._running = None
        follower = self._followers.get(prompt_id) if prompt_id is not None else None
        if follower is not None and follower.generation == self._generation:
            follower.put(event)

    def _dropped(self, why: str) -> None:
        """Tell every follower of the connection that ended: each reconciles its prompt through /history."""
        if self._client_id is None:
            return
        logger.info("[%s] %s; %d prompt(s) in flight reconcile", self.server, why, len(self._followers))
        self._client_id, self._running = None, None
        for follower in self._followers.values():
            if follower.generation == self._generation:
                follower.put(_DROPPED)
