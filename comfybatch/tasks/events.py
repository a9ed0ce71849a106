"""Prefect events for item state changes (`comfybatch.item.<state>`, resource = the batch).

The engine numbers the events of each flow run itself (`seq` in the payload: 1, 2, 3… in the order they are
handed to Prefect's event worker, which sends them in that order). The number is stored with the event, so every
dashboard replica serves one batch's stream with the same numbers, whenever it subscribed. `batch.finished` is the
last numbered event of a run; `run.cancelling` tells the stream the engine saw its run asked to stop.
"""

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Literal
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events import emit_event
from prefect.events.filters import (
    EventAnyResourceFilter,
    EventFilter,
    EventNameFilter,
    EventOccurredFilter,
    EventOrder,
)

from comfybatch.models import JobSpec

# What an item event says happened (`comfybatch.item.<state>`); the page and the SDK know these names.
ItemState = Literal["running", "progress", "done", "failed", "retrying", "skipped"]
Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []
FINAL_EVENT = "comfybatch.batch.finished"


def add_listener(listener: Listener) -> Callable[[], None]:
    """Also call `listener(event_name, payload)` in this process (the CLI's progress bar); returns a remover."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def batch_resource(batch: str) -> dict[str, str]:
    return {"prefect.resource.id": f"comfybatch.batch.{batch}", "prefect.resource.name": batch}


class EventNumbers:
    """The next `seq` of each flow run in this process. Numbering and handing the event to Prefect happen under
    one lock: jobs in threads never send number 6 before number 5."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._last: dict[UUID, int] = {}
        self._closed: set[UUID] = set()

    def take(self, run_id: UUID) -> int | None:
        """The run's next number, or None once its stream is closed."""
        if run_id in self._closed:
            return None
        self._last[run_id] = seq = self._last.get(run_id, 0) + 1
        return seq

    def close(self, run_id: UUID) -> None:
        """The run's stream is complete: later events of it are not numbered (nor streamed)."""
        self._closed.add(run_id)

    def continue_after(self, run_id: UUID, seq: int) -> None:
        with self.lock:  # a run executed again numbers on, even in the process that closed its stream
            self._closed.discard(run_id)
            self._last[run_id] = max(self._last.get(run_id, 0), seq)


_numbers = EventNumbers()
_STORED_LOOKBACK = 50  # the newest stored events (one page, Prefect's most) read for the highest number


async def continue_numbering(run_id: UUID, since: datetime) -> None:
    """A run executed again (its process died; Prefect or an automation ran it anew) numbers on after the highest
    `seq` its earlier execution stored and the `run.crashed` that closed it, so its stream repeats no number."""
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=since - timedelta(minutes=1), until=since + timedelta(days=7)),
        event=EventNameFilter(prefix=["comfybatch."]),
        any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]),
        order=EventOrder.DESC,
    )  # fmt: skip
    async with get_client() as client:
        page = await client.read_events(event_filter, limit=_STORED_LOOKBACK)
    numbers = [seq for event in page.events if isinstance(seq := event.payload.get("seq"), int)]
    # One number more: a dashboard closed the crashed execution's stream with `run.crashed` under it.
    _numbers.continue_after(run_id, max(numbers, default=0) + 1)


def _current_run_id() -> UUID | None:
    if (task := TaskRunContext.get()) is not None:
        return task.task_run.flow_run_id
    flow = FlowRunContext.get()
    return flow.flow_run.id if flow is not None and flow.flow_run is not None else None


def _emit(event: str, batch: str, payload: dict[str, Any], related: list[dict[str, str]] | None = None) -> None:
    run_id = _current_run_id()
    with _numbers.lock:
        if run_id is not None and (seq := _numbers.take(run_id)) is not None:
            payload = {**payload, "seq": seq}
        if run_id is not None and event == FINAL_EVENT:
            _numbers.close(run_id)
        emit_event(event=event, resource=batch_resource(batch), related=related, payload=payload)


def emit_item_event(job: JobSpec, state: ItemState, **payload: Any) -> None:
    """Record one item's state change; the dashboard streams these."""
    body = {"key": job.key, "index": job.index, "job_key": job.job_key, "state": state, **payload}
    for listener in list(_listeners):
        listener(f"comfybatch.item.{state}", body)
    related = [{"prefect.resource.id": f"comfybatch.item.{job.key}", "prefect.resource.role": "item",
                "prefect.resource.name": job.job_key}]  # fmt: skip
    _emit(f"comfybatch.item.{state}", job.batch, body, related)


def emit_batch_event(batch: str, state: str, **payload: Any) -> None:
    for listener in list(_listeners):
        listener(f"comfybatch.batch.{state}", {"batch": batch, **payload})
    _emit(f"comfybatch.batch.{state}", batch, payload)


def emit_run_state(batch: str, state: str, state_name: str, **payload: Any) -> None:
    """The engine's own view of its run's state (`comfybatch.run.cancelling`), streamed as `run.<state>`."""
    _emit(f"comfybatch.run.{state.lower()}", batch, {"state": state, "state_name": state_name, **payload})


class ProgressThrottle:
    """Let through at most one progress event per item every `interval_s` (ComfyUI sends one per step)."""

    def __init__(self, interval_s: float = 2.0) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    def ready(self, *, final: bool = False) -> bool:
        now = time.monotonic()
        if final or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False
