"""Follow one prompt to its end without ever missing a completion or submitting twice.

Events come over the server's shared socket, routed by prompt_id. `/history` is the source of
truth: every ending is confirmed there, and after a dropped socket the prompt is followed by
polling `/history` and `/queue` (the socket's `status` broadcasts only wake the poll early),
because on 0.3.x a re-used client id can silently stop receiving (comfyui-protocol.md §2.5).
"""

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

from pydantic import BaseModel, ConfigDict, Field

from comfybatch.comfy.events import ComfyEvent
from comfybatch.comfy.protocol import HistoryEntry, OutputFile, QueueState
from comfybatch.comfy.socket import EventHub, PromptEvents
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import ComfyBatchError, JobFailed, JobInterrupted, JobLost, JobTimeout, ServerUnavailable

EventHandler = Callable[[ComfyEvent], None]
_HISTORY_SETTLE_S = 5.0  # history is written before executing(null), but proxies may reorder
logger = logging.getLogger(__name__)


class PromptClient(Protocol):
    """What following a prompt needs from a client (`ComfyClient` is one); `follow` calls nothing else."""

    @property
    def name(self) -> str: ...

    @property
    def events(self) -> EventHub: ...

    async def queue_prompt(self, workflow: ApiWorkflow, *, prompt_id: str, client_id: str) -> object: ...

    async def get_history(self, prompt_id: str) -> HistoryEntry | None: ...

    async def get_queue(self) -> QueueState: ...

    async def cancel(self, prompt_id: str) -> None: ...


class Timeouts(BaseModel):
    """Deadlines for one prompt, distinct from how long it may legitimately run."""

    model_config = ConfigDict(frozen=True)

    start_timeout_s: float = Field(600.0, gt=0, description="Queued but not started (waits behind other prompts).")
    idle_timeout_s: float = Field(120.0, gt=0, description="Started, but no event for this long.")
    max_runtime_s: float | None = Field(None, gt=0, description="Total time from queueing, if bounded.")
    poll_interval_s: float = Field(0.5, gt=0, description="History/queue polling after a dropped socket.")


class PromptResult(BaseModel):
    """A prompt that ended successfully, as `/history` recorded it."""

    model_config = ConfigDict(frozen=True)

    prompt_id: str
    server: str
    outputs: list[OutputFile]
    cached_nodes: list[str] = Field(default_factory=list)
    queued_at: float | None = None
    started_at: float | None = None
    finished_at: float
    reconnects: int = 0
    execution_s: float | None = None  # the server's own execution time (its history's start and success times)


class _Watch:
    """The clocks of one prompt: start deadline, idle deadline, total deadline."""

    def __init__(self, timeouts: Timeouts, *, started: bool = False) -> None:
        self.timeouts = timeouts
        self.queued_at = time.time()
        self.started_at: float | None = self.queued_at if started else None
        self._queued = time.monotonic()
        self._last_event = self._queued
        self.cached_nodes: list[str] = []
        self.reconnects = 0

    def saw(self, event: ComfyEvent) -> None:
        self._last_event = time.monotonic()
        if event.shows_start and self.started_at is None:
            self.started_at = time.time()
        if event.type == "execution_cached":
            self.cached_nodes = [str(node) for node in event.data.get("nodes") or []]

    def remaining_s(self, *, listening: bool) -> float:
        """Seconds until the nearest deadline that applies (idle only while events are visible)."""
        now = time.monotonic()
        deadlines = []
        if self.started_at is None:
            deadlines.append(self._queued + self.timeouts.start_timeout_s)
        elif listening:
            deadlines.append(self._last_event + self.timeouts.idle_timeout_s)
        if self.timeouts.max_runtime_s is not None:
            deadlines.append(self._queued + self.timeouts.max_runtime_s)
        return min(deadlines, default=float("inf")) - now

    def expiry(self) -> str:
        if self.started_at is None:
            return f"not started within {self.timeouts.start_timeout_s:g} s"
        if self.timeouts.max_runtime_s is not None and time.monotonic() - self._queued >= self.timeouts.max_runtime_s:
            return f"still running after {self.timeouts.max_runtime_s:g} s"
        return f"no event for {self.timeouts.idle_timeout_s:g} s"


async def run_prompt(
    client: PromptClient, workflow: ApiWorkflow, *, prompt_id: str, timeouts: Timeouts,
    on_event: EventHandler | None = None,
) -> PromptResult:  # fmt: skip
    """Queue `workflow` as `prompt_id` and follow it to its end over the server's shared socket."""
    async with client.events.follow(prompt_id) as events, _cancel_on_exit(client, prompt_id):
        watch = _Watch(timeouts)
        # With the socket down, an id no socket has: its events are dropped and the prompt is polled.
        client_id = events.client_id or uuid.uuid4().hex
        try:
            await client.queue_prompt(workflow, prompt_id=prompt_id, client_id=client_id)
        except ServerUnavailable:
            # The connection broke after sending: the server may have queued it. Never submit twice.
            if not await _is_known(client, prompt_id):
                raise
            entry = await _reconcile(client, prompt_id, watch, "POST /prompt lost its answer")
        else:
            if events.client_id is None:
                entry = await _reconcile(client, prompt_id, watch, "event socket is down")
            else:
                entry = await _listen(client, events, prompt_id, watch, on_event)
    return _result(client.name, prompt_id, entry, watch)


async def resume_prompt(client: PromptClient, prompt_id: str, *, timeouts: Timeouts) -> PromptResult:
    """Follow a prompt this process did not queue (or lost the socket of) by polling."""
    watch = _Watch(timeouts)
    async with client.events.hold(), _cancel_on_exit(client, prompt_id):  # its status broadcasts wake the poll
        entry = await _poll(client, prompt_id, watch)
    return _result(client.name, prompt_id, entry, watch)


async def _listen(
    client: PromptClient, events: PromptEvents, prompt_id: str, watch: _Watch, on_event: EventHandler | None
) -> HistoryEntry:
    while True:
        try:
            event = await events.receive(watch.remaining_s(listening=True))
        except ServerUnavailable:
            return await _reconcile(client, prompt_id, watch, "event socket dropped")  # never re-submit
        if event is None:
            if watch.remaining_s(listening=True) <= 0:
                return await _expire(client, prompt_id, watch)
            continue
        watch.saw(event)
        if on_event is not None:
            on_event(event)
        if event.is_terminal:
            return await _settled_history(client, prompt_id)


async def _reconcile(client: PromptClient, prompt_id: str, watch: _Watch, why: str) -> HistoryEntry:
    """Follow a prompt whose connection broke through `/history` and `/queue`."""
    watch.reconnects += 1
    logger.info("[%s] %s: %s; following it by /history", client.name, prompt_id, why, extra={"prompt_id": prompt_id})
    return await _poll(client, prompt_id, watch)


async def _is_known(client: PromptClient, prompt_id: str) -> bool:
    """Whether the server holds `prompt_id` (queued, running or finished). Raises: ServerUnavailable."""
    if await client.get_history(prompt_id) is not None:
        return True
    return (await client.get_queue()).position(prompt_id) is not None or await client.get_history(prompt_id) is not None


async def _poll(client: PromptClient, prompt_id: str, watch: _Watch) -> HistoryEntry:
    while True:
        if (entry := await client.get_history(prompt_id)) is not None:
            return entry
        position = (await client.get_queue()).position(prompt_id)
        if position is None:
            # It may have finished between the two reads.
            if (entry := await client.get_history(prompt_id)) is not None:
                return entry
            raise JobLost("prompt is in neither /queue nor /history", server=client.name, prompt_id=prompt_id)
        if position == "running" and watch.started_at is None:
            watch.started_at = time.time()
        if watch.remaining_s(listening=False) <= 0:
            return await _expire(client, prompt_id, watch)
        # The queue moving (a `status` broadcast on the shared socket) wakes us before the interval ends.
        await client.events.wait_for_status(min(watch.timeouts.poll_interval_s, watch.remaining_s(listening=False)))


async def _expire(client: PromptClient, prompt_id: str, watch: _Watch) -> HistoryEntry:
    if (entry := await client.get_history(prompt_id)) is not None:
        return entry  # finished while our deadline ran out
    raise JobTimeout(watch.expiry(), server=client.name, prompt_id=prompt_id)


async def _settled_history(client: PromptClient, prompt_id: str) -> HistoryEntry:
    deadline = time.monotonic() + _HISTORY_SETTLE_S
    while (entry := await client.get_history(prompt_id)) is None:
        if time.monotonic() >= deadline:
            raise JobLost("ended, but never appeared in /history", server=client.name, prompt_id=prompt_id)
        await asyncio.sleep(0.05)
    return entry


@contextlib.asynccontextmanager
async def _cancel_on_exit(client: PromptClient, prompt_id: str) -> AsyncIterator[None]:
    """On cancellation or a timeout, make sure the prompt neither waits nor runs on the server."""
    try:
        yield
    except (asyncio.CancelledError, JobTimeout):
        with contextlib.suppress(ComfyBatchError, TimeoutError):
            async with asyncio.timeout(5.0):
                await client.cancel(prompt_id)
        raise


def _result(server: str, prompt_id: str, entry: HistoryEntry, watch: _Watch) -> PromptResult:
    if not entry.succeeded:
        raise _failure(server, prompt_id, entry)
    return PromptResult(
        prompt_id=prompt_id, server=server, outputs=entry.output_files(), cached_nodes=watch.cached_nodes,
        queued_at=watch.queued_at, started_at=watch.started_at, finished_at=time.time(),
        reconnects=watch.reconnects, execution_s=entry.execution_s,
    )  # fmt: skip


def _failure(server: str, prompt_id: str, entry: HistoryEntry) -> ComfyBatchError:
    if (interrupted := entry.status.message("execution_interrupted")) is not None:
        return JobInterrupted(server=server, prompt_id=prompt_id, node_id=_str(interrupted.get("node_id")))
    error = entry.status.message("execution_error") or {}
    return JobFailed(
        str(error.get("exception_message") or "failed without an error message").strip(),
        server=server, prompt_id=prompt_id, node_id=_str(error.get("node_id")),
        node_type=_str(error.get("node_type")), exception_type=_str(error.get("exception_type")),
    )  # fmt: skip


def _str(value: object) -> str | None:
    return None if value is None else str(value)
