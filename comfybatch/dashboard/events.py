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
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
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
BATCH_FLOW = "generate-batch"  # the flow of every batch run (`launcher.GENERATE_BATCH`'s flow part)
# Flow-run events that are no state change: the engine's heartbeat (every few seconds of a run) and pull steps.
_NOT_STATES = ["prefect.flow-run.heartbeat", "prefect.flow-run.pull-step."]
_HISTORY_MARGIN = timedelta(minutes=1)  # clocks of the Prefect server and its clients differ a little
# Prefect's event persister stores what it received at least every 5 s: a history read sooner may lack the newest.
_PERSIST_LAG_S = 6.0
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


def state_of(event: Event) -> str | None:
    """The state type a `prefect.flow-run.*` event reports (`COMPLETED`), or None for any other event."""
    if not event.event.startswith("prefect.flow-run."):
        return None
    return (event.resource.get("prefect.state-type") or "").upper() or None


def is_batch_event(event: Event) -> bool:
    """Whether the event is one of a batch's: ours, or a state change of a `generate-batch` flow run."""
    if event.event.startswith("comfybatch."):
        return True
    return any(r.role == "flow" and r.get("prefect.resource.name") == BATCH_FLOW for r in event.related)


def streamed(event: Event) -> bool:
    """Whether a batch's stream carries the event: our events and its run's state changes, nothing else."""
    return not event.event.startswith("prefect.flow-run.") or state_of(event) is not None


def message_of(event: Event, seq: int) -> dict[str, Any]:
    """What a client receives: `seq`, `type` (`item.<state>`, `batch.<state>` or `run.<state>`) and the payload."""
    if (state := state_of(event)) is not None:
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
    sealed_at: tuple[float, datetime] | None = None  # monotonic and wall-clock time of sealing
    caught_up: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: Event) -> bool:
        # A heartbeat once took a number of its own and reached clients as `{"type": "run.", "state": ""}`.
        if event.id in self.seen or not streamed(event):
            return False
        self.seen.add(event.id)
        self.events.append(event)
        if (state := state_of(event)) is not None:
            self.ended = state in TERMINAL_STATES
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
        self.ended = any(state_of(e) in TERMINAL_STATES for e in self.events)
        self.sealed = True
        self.sealed_at = (time.monotonic(), datetime.now(UTC))

    def catch_up_in(self) -> float | None:
        """Seconds until the history read at sealing is surely complete (None once caught up)."""
        if self.caught_up or self.sealed_at is None:
            return None
        return max(self.sealed_at[0] + _PERSIST_LAG_S - time.monotonic(), 0.0)


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
                _, evicted = self._logs.popitem(last=False)
                evicted.changed.set()  # its streams wake up, see it is gone and rebuild it
        else:
            self._logs.move_to_end(run_id)
        return log

    @property
    def logged(self) -> int:
        """How many batch logs this hub holds (at most `max_batches`)."""
        return len(self._logs)

    def ingest(self, event: Event) -> None:
        """Add a live event to its batch's log. Only batches get logs: `comfybatch.*` events and the state changes
        of `generate-batch` runs (or of runs already logged); other flows of the workspace cost nothing."""
        run_id = run_id_of(event)
        if run_id is None or not (run_id in self._logs or is_batch_event(event)):
            return
        if self._log(run_id).add(event):
            self.metrics.observe(event, run_id)

    async def _subscribe(self) -> None:
        event_filter = EventFilter(event=EventNameFilter(prefix=EVENT_PREFIXES, exclude_prefix=_NOT_STATES))
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
                log.seal(await self.history(run_id, created - _HISTORY_MARGIN))
        self._sealing.pop(run_id, None)
        return log

    async def stream(self, run_id: UUID, created: datetime, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Messages numbered after `after`, then live ones, until the batch's run has ended."""
        log = await self.log(run_id, created)
        position = max(after, 0)
        while True:
            if self._logs.get(run_id) is not log:  # evicted while streamed: rebuilt from the history and live events
                log = await self.log(run_id, created)
            changed = log.changed
            while position < len(log.events):
                position += 1
                yield message_of(log.events[position - 1], position)
            if log.ended:
                return
            try:
                async with asyncio.timeout(log.catch_up_in()):
                    await changed.wait()
            except TimeoutError:
                await self._catch_up(run_id, log)

    async def _catch_up(self, run_id: UUID, log: BatchLog) -> None:
        """Add events that happened before the subscription but were not stored yet when the log was sealed.

        Without this a batch that ended seconds before its first stream never showed its ending: the stream hung.
        """
        if log.caught_up or log.sealed_at is None:
            return
        log.caught_up = True  # before the await: concurrent streams of the batch read the history once
        for event in sorted(await self.history(run_id, log.sealed_at[1] - _HISTORY_MARGIN), key=lambda e: e.occurred):
            log.add(event)  # appended: numbers already sent never change

    async def latest(self, run_id: UUID, created: datetime) -> int:
        """The last sequence number a stream of the batch would send now (0 before its first event)."""
        log = self._logs.get(run_id)
        if log is not None and log.sealed:
            return len(log.events)
        if self.subscribed.is_set():  # live events reach the log: number it now, as a stream would
            return len((await self.log(run_id, created)).events)
        # Not subscribed (an app without its lifespan): a stream would number the stored history, once each.
        history = await self.history(run_id, created - _HISTORY_MARGIN)
        return len({event.id for event in history if streamed(event)})


def history_filter(run_id: UUID, since: datetime) -> EventFilter:
    """Prefect's stored events of one batch's run, oldest first."""
    return EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(since.tzinfo) + timedelta(days=1)),
        event=EventNameFilter(prefix=EVENT_PREFIXES, exclude_prefix=_NOT_STATES),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
        order=EventOrder.ASC,
    )
