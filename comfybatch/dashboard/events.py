"""Per-batch event logs with sequence numbers, fed by one subscription to Prefect's event stream.

The engine emits `comfybatch.*` events; Prefect emits `prefect.flow-run.*` state changes. One
subscriber receives both for every batch and appends each to its batch's log (by flow run id),
numbering them 1, 2, 3… A client that reconnects with `after=N` gets events N+1… from the log,
then live ones. A batch that began before this process subscribed is read back once from Prefect's
event history (oldest first) the first time someone asks for it, before any number is handed out.
"""

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

from prefect.events.clients import PrefectEventSubscriber
from prefect.events.filters import (
    EventAnyResourceFilter,
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
)
from prefect.events.schemas.events import Event

from comfybatch.dashboard.metrics import EventMetrics
from comfybatch.dashboard.schemas import TERMINAL_STATES

logger = logging.getLogger(__name__)

EVENT_PREFIXES = ["comfybatch.", "prefect.flow-run."]
_RECONNECT_PAUSE_S = 1.0
_RECONNECT_MAX_PAUSE_S = 30.0

History = Callable[[UUID, datetime], Awaitable[list[Event]]]


def run_id_of(event: Event) -> UUID | None:
    """The flow run an event belongs to: its resource (flow-run events) or a related flow run."""
    resources = [event.resource, *event.related]
    for resource in resources:
        rid = resource.id
        if rid.startswith("prefect.flow-run."):
            with contextlib.suppress(ValueError):
                return UUID(rid.removeprefix("prefect.flow-run."))
    return None


def message_of(event: Event, seq: int) -> dict[str, Any]:
    """What a client receives: `seq`, `type` (`item.<state>`, `batch.<state>` or `run.<state>`) and the payload."""
    if event.event.startswith("prefect.flow-run."):
        state = (event.resource.get("prefect.state-type") or "").upper()
        body: dict[str, Any] = {"type": f"run.{state.lower()}", "state": state,
                                "state_name": event.resource.get("prefect.state-name")}  # fmt: skip
    else:
        body = {"type": event.event.removeprefix("comfybatch."), **event.payload}
    return {"seq": seq, "occurred": event.occurred.isoformat(), **body}


@dataclass
class BatchLog:
    """The numbered events of one batch. Unsealed events are collected but not yet numbered."""

    events: list[Event] = field(default_factory=list)
    seen: set[UUID] = field(default_factory=set)
    sealed: bool = False
    ended: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: Event) -> bool:
        if event.id in self.seen:
            return False
        self.seen.add(event.id)
        self.events.append(event)
        if event.event.startswith("prefect.flow-run."):
            self.ended = (event.resource.get("prefect.state-type") or "").upper() in TERMINAL_STATES
        if self.sealed:
            self.changed.set()
            self.changed = asyncio.Event()  # waiters hold the set one; later waiters get a fresh one
        return True

    def seal(self, history: list[Event]) -> None:
        """Number the events: history and live ones merged, oldest first (by time, then arrival)."""
        live = self.events
        self.events, self.seen = [], set()
        for event in sorted(history, key=lambda e: e.occurred):
            self.add(event)
        for event in live:
            self.add(event)
        self.events.sort(key=lambda e: e.occurred)  # stable: arrival order breaks ties
        self.ended = any(
            (e.resource.get("prefect.state-type") or "").upper() in TERMINAL_STATES
            for e in self.events
            if e.event.startswith("prefect.flow-run.")
        )
        self.sealed = True


class EventHub:
    """Subscribes to Prefect's event stream while the app runs; serves numbered per-batch logs."""

    def __init__(self, api_url: str | None, history: History, *, max_batches: int = 200) -> None:
        self.api_url = api_url
        self.history = history
        self.max_batches = max_batches
        self.subscribed = asyncio.Event()
        self._logs: OrderedDict[UUID, BatchLog] = OrderedDict()
        self._sealing: dict[UUID, asyncio.Lock] = {}
        self._task: asyncio.Task[None] | None = None
        self.metrics = EventMetrics()

    def start(self) -> None:
        """Subscribe from now on (idempotent): by the app's lifespan, or by the first stream where there is none."""
        if self._task is None or self._task.done():
            self.subscribed = asyncio.Event()
            self._task = asyncio.create_task(self._subscribe(), name="comfybatch-event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def _log(self, run_id: UUID) -> BatchLog:
        log = self._logs.get(run_id)
        if log is None:
            log = self._logs[run_id] = BatchLog()
            while len(self._logs) > self.max_batches:  # forget the least recently used batch
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(run_id)
        return log

    def ingest(self, event: Event) -> None:
        run_id = run_id_of(event)
        if run_id is not None and self._log(run_id).add(event):
            self.metrics.observe(event, run_id)

    async def _subscribe(self) -> None:
        event_filter = EventFilter(event=EventNameFilter(prefix=EVENT_PREFIXES))
        pause = _RECONNECT_PAUSE_S
        while True:
            try:
                async with PrefectEventSubscriber(
                    self.api_url, filter=event_filter, reconnection_attempts=5, reconnect_on_clean_close=True
                ) as subscriber:
                    self.subscribed.set()
                    pause = _RECONNECT_PAUSE_S
                    async for event in subscriber:
                        self.ingest(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the Prefect server went away: keep trying, the logs stay
                logger.warning("Prefect event stream lost (%s: %s); reconnecting in %g s", type(exc).__name__,
                               exc, pause)  # fmt: skip
            await asyncio.sleep(pause)
            pause = min(pause * 2, _RECONNECT_MAX_PAUSE_S)

    async def log(self, run_id: UUID, created: datetime) -> BatchLog:
        """The batch's numbered log, read back from Prefect's history the first time."""
        self.start()
        log = self._log(run_id)
        if log.sealed:
            return log
        lock = self._sealing.setdefault(run_id, asyncio.Lock())
        async with lock:
            if not log.sealed:
                await self.subscribed.wait()  # live events from here on reach the log
                log.seal(await self.history(run_id, created - timedelta(minutes=1)))
        self._sealing.pop(run_id, None)
        return log

    async def stream(self, run_id: UUID, created: datetime, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Messages numbered after `after`, then live ones, until the batch's run has ended."""
        log = await self.log(run_id, created)
        position = max(after, 0)
        while True:
            changed = log.changed
            while position < len(log.events):
                position += 1
                yield message_of(log.events[position - 1], position)
            if log.ended:
                return
            await changed.wait()

    def latest(self, run_id: UUID) -> int:
        log = self._logs.get(run_id)
        return len(log.events) if log and log.sealed else 0


def history_filter(run_id: UUID, since: datetime) -> EventFilter:
    """Prefect's stored events of one batch's run, oldest first."""
    return EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(since.tzinfo) + timedelta(days=1)),
        event=EventNameFilter(prefix=EVENT_PREFIXES),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
        order=EventOrder.ASC,
    )
