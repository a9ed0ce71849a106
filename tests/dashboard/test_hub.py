"""Issue 12 §2 (part): the event hub logs only batches, and a stream whose log was evicted rebuilds it."""

import uuid
from typing import Any

import anyio
import pytest
from prefect.events.schemas.events import Event, RelatedResource, Resource

from comfybatch.dashboard.events import EventHub
from comfybatch.dashboard.launcher import Launcher
from tests.dashboard.conftest import AUTH, DashboardPlatform, RenderedBatches, slow_spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(180)]


def _state_event(run_id: uuid.UUID, flow: str) -> Event:
    return Event(
        event="prefect.flow-run.Running",
        resource=Resource({"prefect.resource.id": f"prefect.flow-run.{run_id}", "prefect.state-type": "RUNNING"}),
        related=[
            RelatedResource(
                {
                    "prefect.resource.id": f"prefect.flow.{uuid.uuid4()}",
                    "prefect.resource.role": "flow",
                    "prefect.resource.name": flow,
                }
            )
        ],
    )


async def _no_history(_run_id: uuid.UUID, _since: Any) -> list[Event]:
    return []


def test_only_batch_runs_get_a_log() -> None:
    """State changes of another flow's runs in the workspace are not logged; a generate-batch run's are."""
    hub = EventHub(None, _no_history)

    hub.ingest(_state_event(uuid.uuid4(), "nightly-cleanup"))
    assert hub.logged == 0

    hub.ingest(_state_event(uuid.uuid4(), "generate-batch"))
    assert hub.logged == 1


async def test_a_stream_whose_log_is_evicted_rebuilds_it_and_sees_the_end(
    dashboard_platform: DashboardPlatform, rendered: RenderedBatches
) -> None:
    """With room for one log, reading another batch evicts a streamed batch's log; the stream still ends with the
    run's final state instead of waiting forever."""
    launcher = Launcher(dashboard_platform.settings(), api_url=dashboard_platform.api_url)
    hub = EventHub(dashboard_platform.api_url, launcher.history, max_batches=1)
    hub.start()
    try:
        async with dashboard_platform.client() as http:
            created = await http.post("/api/batches", json=slow_spec(f"dash-evict-{uuid.uuid4().hex[:6]}", "a", "b",
                                                                     seconds=3.0), headers=AUTH)  # fmt: skip
            assert created.status_code == 202, created.text
        run = await launcher.get(uuid.UUID(created.json()["batch_id"]))
        other = await launcher.get(uuid.UUID(rendered.first["batch_id"]))
        seen: list[dict[str, Any]] = []
        with anyio.fail_after(120):
            async for message in hub.stream(run.id, run.created):  # type: ignore[arg-type]
                seen.append(message)
                if len(seen) == 1:
                    await hub.log(other.id, other.created)  # type: ignore[arg-type]
    finally:
        await hub.stop()

    assert seen[-1]["type"] == "run.completed"
    assert [message["seq"] for message in seen] == list(range(1, len(seen) + 1))
