"""A batch run executed again after a crash numbers its stream's events on after what its first execution stored."""

import time
from uuid import UUID

import anyio
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import FlowRunContext
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter

from comfybatch.tasks import events
from comfybatch.tasks.events import EventNumbers, continue_numbering, emit_batch_event
from tests.flows.conftest import PREFECT_SOCKETS

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS, pytest.mark.timeout(120)]


@flow(name="numbered-events")
async def _emit_three() -> UUID:
    run = FlowRunContext.get()
    assert run is not None
    assert run.flow_run is not None
    for step in range(3):
        emit_batch_event("numbered", f"step-{step}")
    return run.flow_run.id


async def test_a_run_executed_again_numbers_on_after_its_stored_events(
    prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three events stored as 1..3, the stream closed with `run.crashed` as 4: a fresh process's numbering (as
    after a crash) continues at 5."""
    run_id = await _emit_three()
    stored = EventFilter(event=EventNameFilter(prefix=["comfybatch.batch.step-"]),
                         any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]))  # fmt: skip
    deadline = time.monotonic() + 60
    async with get_client() as client:
        while len((await client.read_events(stored, limit=10)).events) < 3:  # Prefect stores every few seconds
            assert time.monotonic() < deadline, "the three events were not stored within 60 s"
            await anyio.sleep(0.5)
        created = (await client.read_flow_run(run_id)).created
    assert created is not None
    fresh = EventNumbers()  # what a new process starts with
    monkeypatch.setattr(events, "_numbers", fresh)

    await continue_numbering(run_id, created)

    assert fresh.take(run_id) == 5
