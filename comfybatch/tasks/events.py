"""Prefect events for item state changes (`comfybatch.item.<state>`, resource = the batch)."""

import time
from typing import Any

from prefect.events import emit_event

from comfybatch.models import JobSpec

ItemState = str  # queued | submitted | running | progress | done | failed | retrying | skipped


def batch_resource(batch: str) -> dict[str, str]:
    return {"prefect.resource.id": f"comfybatch.batch.{batch}", "prefect.resource.name": batch}


def emit_item_event(job: JobSpec, state: ItemState, **payload: Any) -> None:
    """Record one item's state change; the dashboard streams these."""
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
        payload={"key": job.key, "index": job.index, "job_key": job.job_key, "state": state, **payload},
    )


def emit_batch_event(batch: str, state: str, **payload: Any) -> None:
    emit_event(event=f"comfybatch.batch.{state}", resource=batch_resource(batch), payload=payload)


class ProgressThrottle:
    """Let through at most one progress event per item every `interval_s` (ComfyUI sends one per step)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self._last = 0.0

    def ready(self, *, final: bool = False) -> bool:
        now = time.monotonic()
        if final or now - self._last >= self.interval_s:
            self._last = now
            return True
        return False
