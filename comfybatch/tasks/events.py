"""Prefect events for item state changes (`comfybatch.item.<state>`, resource = the batch)."""

import time
from collections.abc import Callable
from typing import Any

from prefect.events import emit_event

from comfybatch.models import JobSpec

ItemState = str  # submitted | running | progress | done | failed | retrying | skipped
Listener = Callable[[str, dict[str, Any]], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Also call `listener(event_name, payload)` in this process (the CLI's progress bar); returns a remover."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def batch_resource(batch: str) -> dict[str, str]:
    return {"prefect.resource.id": f"comfybatch.batch.{batch}", "prefect.resource.name": batch}


def emit_item_event(job: JobSpec, state: ItemState, **payload: Any) -> None:
    """Record one item's state change; the dashboard streams these."""
    body = {"key": job.key, "index": job.index, "job_key": job.job_key, "state": state, **payload}
    for listener in list(_listeners):
        listener(f"comfybatch.item.{state}", body)
    emit_event(
        event=f"comfybatch.item.{state}",
        resource=batch_resource(job.batch),
        related=[
            {
                "prefect.resource.id": f"comfybatch.item.{job.key}",
                "prefect.resource.role": "item",
                "prefect.resource.name": job.job_key,
            }
        ],
        payload=body,
    )


def emit_batch_event(batch: str, state: str, **payload: Any) -> None:
    for listener in list(_listeners):
        listener(f"comfybatch.batch.{state}", {"batch": batch, **payload})
    emit_event(event=f"comfybatch.batch.{state}", resource=batch_resource(batch), payload=payload)


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
