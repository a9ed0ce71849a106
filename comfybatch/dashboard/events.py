"""Per-batch event logs, fed by one subscription to Prefect's event stream, numbered by the engine.

The engine numbers each run's `comfybatch.*` events itself (`seq` in the payload, `tasks/events.py`), and Prefect
stores that number with the event: every dashboard replica, whenever it subscribed, serves the same messages
under the same numbers. A client that reconnects with `after=N` — to this process or another — gets N+1… from
the log, then live ones. A batch that began before this process subscribed is read back from Prefect's event
history the first time someone asks for it; numbers missing between live and stored events are read back again
once Prefect has surely stored them. Prefect's own state changes of the run are not numbered: they tell the log
when the run has ended, and the log then closes with one `run.<state>` message numbered after the engine's last
(`batch.finished`, or the last one stored when the engine died without it).
"""

import asyncio
import bisect
import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

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
from comfybatch.prefect_events import follow_events
from comfybatch.tasks.events import FINAL_EVENT

EVENT_PREFIXES = ["comfybatch.", "prefect.flow-run."]
BATCH_FLOW = "generate-batch"  # the flow of every batch run (`launcher.GENERATE_BATCH`'s flow part)
# Flow-run events that are no state change: the engine's heartbeat (every few seconds of a run) and pull steps.
_NOT_STATES = ["prefect.flow-run.heartbeat", "prefect.flow-run.pull-step."]
_HISTORY_MARGIN = timedelta(minutes=1)  # clocks of the Prefect server and its clients differ a little
_LONG_AGO = timedelta(minutes=2)  # beyond the storage lag and any clock difference
# Prefect's event persister stores what it received at least every 5 s: a history read sooner may lack the newest.
_PERSIST_LAG_S = 6.0

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


def seq_of(event: Event) -> int | None:
    """The engine's number for one of its events (None for Prefect's events and unnumbered ones)."""
    seq = event.payload.get("seq") if event.event.startswith("comfybatch.") else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else None


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
    """The numbered messages of one batch, in the engine's order.

    Messages are released only as an unbroken run 1, 2, 3…; a number that is missing waits for Prefect's history
    (`settle`). When Prefect reports the run ended, the log closes with one `run.<state>` message: at once after
    the engine's `batch.finished`, otherwise once the history is surely complete (the engine died).
    """

    messages: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[int, Event] = field(default_factory=dict)  # numbered, not released: an earlier number is missing
    last_seq: int = 0
    terminal: Event | None = None  # Prefect's state change that ended the run
    state_at: datetime | None = None  # when the newest state change seen happened
    finished: bool = False  # the engine's last numbered event was released
    ended: bool = False  # the closing `run.<state>` message is in `messages`
    sealed: bool = False
    recheck: bool = False  # read the history once more when it is surely complete (events in flight at sealing)
    waiting_since: float | None = None  # monotonic time the log began to wait for a missing number or an end
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, event: Event) -> bool:
        """Take one event; True if it was new to the log."""
        if (state := state_of(event)) is not None:
            if not self._state(event, state):
                return False
        elif (seq := seq_of(event)) is None or seq <= self.last_seq or seq in self.pending:
            return False  # unnumbered (another process's audit event) or already here
        else:
            self.pending[seq] = event
        self._release()
        return True

    def _state(self, event: Event, state: str) -> bool:
        """Follow the run's newest state: it ends the log when terminal, and a crashed run that runs again (an
        automation rescheduled it) goes on."""
        if self.state_at is not None and event.occurred < self.state_at:
            return False  # older than a state already seen (history read after live events)
        self.state_at = event.occurred
        if state in TERMINAL_STATES:
            if self.terminal is not None:
                return False
            self.terminal = event
            return True
        if self.terminal is None:
            return False
        if not self.ended:  # not closed yet: the run went on
            self.terminal = None
            return True
        return state_of(self.terminal) == "CRASHED" and self._reopen()

    def _release(self) -> None:
        released = False
        while (event := self.pending.pop(self.last_seq + 1, None)) is not None:
            self.last_seq += 1
            self.messages.append(message_of(event, self.last_seq))
            self.finished = self.finished or event.event == FINAL_EVENT
            released = True
        if self.terminal is not None and self.finished and not self.ended:
            self._close()
            released = True
        waiting = self.recheck or bool(self.pending) or (self.terminal is not None and not self.ended)
        self.waiting_since = (self.waiting_since or time.monotonic()) if waiting else None
        if released:
            self.changed.set()
            self.changed = asyncio.Event()  # waiters hold the set one; later waiters get a fresh one

    def _reopen(self) -> bool:
        """A crashed run runs again (an automation rescheduled it): its engine numbers on after the `run.crashed`
        message (`tasks/events.continue_numbering` keeps that number free), and the log waits for its new end."""
        self.terminal, self.finished, self.ended = None, False, False
        return True

    def _close(self) -> None:
        assert self.terminal is not None
        self.last_seq += 1
        self.messages.append(message_of(self.terminal, self.last_seq))
        self.ended = True

    def settle(self, history: list[Event], *, complete: bool) -> None:
        """Add the stored events; with `complete` (read when Prefect has surely stored everything this log waits
        for), numbers still missing are given up and a run that ended without `batch.finished` is closed. Every
        replica reads the same store, so every replica gives up the same numbers."""
        for event in history:
            self.add(event)
        if complete:
            self.recheck = False
            if self.pending:
                self.last_seq = min(self.pending) - 1
            if self.terminal is not None and not self.ended:
                self.finished = True  # whatever the engine numbered is here now
        self._release()

    def wait_s(self) -> float | None:
        """Seconds until Prefect has surely stored what this log waits for (None: it waits for nothing)."""
        if self.waiting_since is None:
            return None
        return max(self.waiting_since + _PERSIST_LAG_S - time.monotonic(), 0.0)

    def after(self, seq: int) -> int:
        """The position in `messages` of the first message numbered after `seq`."""
        return bisect.bisect_right(self.messages, seq, key=lambda message: int(message["seq"]))

    @property
    def latest(self) -> int:
        """The number of the last message released (0 before the first)."""
        return int(self.messages[-1]["seq"]) if self.messages else 0

    def since(self, created: datetime) -> datetime:
        """Where a history read for what this log waits for starts: events missing now came after the last one
        released."""
        last = self.messages[-1]["occurred"] if self.messages else None
        return (datetime.fromisoformat(last) if last else created) - _HISTORY_MARGIN


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
        # Prefect's state changes count too (a batch's duration), though only the one that ends it enters the log.
        if self._log(run_id).add(event) or state_of(event) is not None:
            self.metrics.observe(event, run_id)

    async def _subscribe(self) -> None:
        event_filter = EventFilter(event=EventNameFilter(prefix=EVENT_PREFIXES, exclude_prefix=_NOT_STATES))

        async def ingest(event: Event) -> None:
            self.ingest(event)

        # The logs stay while the Prefect server is away.
        await follow_events(event_filter, ingest, api_url=self.api_url, on_subscribed=self.subscribed.set)

    async def log(self, run_id: UUID, created: datetime) -> BatchLog:
        """The batch's log, read back from Prefect's history the first time."""
        self.start()
        log = self._log(run_id)
        if log.sealed:
            return log
        lock = self._sealing.setdefault(run_id, asyncio.Lock())
        async with lock:
            if not log.sealed:
                await self.subscribed.wait()  # live events from here on reach the log
                history = await self.history(run_id, created - _HISTORY_MARGIN)
                # Events in flight when the subscription began may not be stored yet: read once more later, unless
                # the run ended long ago.
                log.recheck = True
                log.settle(history, complete=_long_ended(log.terminal))
                log.sealed = True
        self._sealing.pop(run_id, None)
        return log

    async def stream(self, run_id: UUID, created: datetime, *, after: int = 0) -> AsyncIterator[dict[str, Any]]:
        """Messages numbered after `after`, then live ones, until the batch's run has ended."""
        log = await self.log(run_id, created)
        sent = max(after, 0)
        position = log.after(sent)
        while True:
            if self._logs.get(run_id) is not log:  # evicted while streamed: rebuilt from the history and live events
                log = await self.log(run_id, created)
                position = log.after(sent)
            changed = log.changed
            while position < len(log.messages):
                message = log.messages[position]
                position += 1
                if message["seq"] > sent:  # a rebuilt log may release again what was sent from the evicted one
                    sent = int(message["seq"])
                    yield message
            if log.ended:
                return
            try:
                async with asyncio.timeout(log.wait_s()):
                    await changed.wait()
            except TimeoutError:
                await self._catch_up(run_id, created, log)

    async def _catch_up(self, run_id: UUID, created: datetime, log: BatchLog) -> None:
        """Read the stored events this log waits for (a missing number, the events of a run that ended without
        `batch.finished`, events in flight when the log was sealed). Once streams have waited out Prefect's storage
        lag, what is still missing is given up: Prefect never stored it."""
        async with log.reading:  # one read for every stream of the batch
            wait = log.wait_s()
            if wait is None or wait > 0:
                return  # another stream read it meanwhile
            log.settle(await self.history(run_id, log.since(created)), complete=True)

    async def latest(self, run_id: UUID, created: datetime) -> int:
        """The last sequence number a stream of the batch would send now (0 before its first event)."""
        log = self._logs.get(run_id)
        if log is not None and log.sealed:
            return log.latest
        if self.subscribed.is_set():  # live events reach the log: read it now, as a stream would
            return (await self.log(run_id, created)).latest
        # Not subscribed (an app without its lifespan): what a stream would number from the stored history.
        stored = BatchLog()
        history = await self.history(run_id, created - _HISTORY_MARGIN)
        stored.settle(history, complete=False)
        stored.settle([], complete=_long_ended(stored.terminal))
        return stored.latest


def _long_ended(terminal: Event | None) -> bool:
    """Whether the run ended so long ago that Prefect has stored every event of it."""
    return terminal is not None and datetime.now(UTC) - terminal.occurred > _LONG_AGO


def history_filter(run_id: UUID, since: datetime) -> EventFilter:
    """Prefect's stored events of one batch's run, oldest first."""
    return EventFilter(
        occurred=EventOccurredFilter(since=since, until=datetime.now(since.tzinfo) + timedelta(days=1)),
        event=EventNameFilter(prefix=EVENT_PREFIXES, exclude_prefix=_NOT_STATES),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
        order=EventOrder.ASC,
    )
