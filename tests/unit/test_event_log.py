"""The dashboard's per-batch event log: history and live events merged once, numbered without gaps or repeats."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.events.schemas.events import Event, RelatedResource, Resource

from comfybatch.dashboard.events import BatchLog, EventHub, message_of, run_id_of

pytestmark = pytest.mark.anyio
RUN = uuid.uuid4()
T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def item_event(second: int, state: str = "done", key: str = "k") -> Event:
    return Event(
        event=f"comfybatch.item.{state}", occurred=T0 + timedelta(seconds=second),
        resource=Resource({"prefect.resource.id": "comfybatch.batch.b"}),
        related=[RelatedResource({"prefect.resource.id": f"prefect.flow-run.{RUN}",
                                  "prefect.resource.role": "flow-run"})],
        payload={"key": key, "state": state},
    )  # fmt: skip


def run_event(second: int, state_type: str) -> Event:
    return Event(event=f"prefect.flow-run.{state_type.title()}", occurred=T0 + timedelta(seconds=second),
                 resource=Resource({"prefect.resource.id": f"prefect.flow-run.{RUN}",
                                    "prefect.state-type": state_type}))  # fmt: skip


def test_seal_merges_history_and_live_in_time_order_once() -> None:
    """An event seen both in history and live is numbered once; the order is by time."""
    first, second, third = item_event(1, key="a"), item_event(2, key="b"), item_event(3, key="c")
    log = BatchLog()
    log.add(third)
    log.add(second)

    log.seal([first, second])

    assert [e.payload["key"] for e in log.events] == ["a", "b", "c"]


def test_events_after_sealing_are_appended_and_duplicates_dropped() -> None:
    """Live events after the seal get the next numbers; a repeated delivery adds nothing."""
    log = BatchLog()
    log.seal([item_event(1, key="a")])
    late = item_event(5, key="b")

    added = [log.add(late), log.add(late)]

    assert added == [True, False]
    assert [message_of(e, i + 1)["seq"] for i, e in enumerate(log.events)] == [1, 2]


def test_run_id_comes_from_the_flow_run_resource_or_a_related_one() -> None:
    """Engine events name the run as a related resource; Prefect's state events as their resource."""
    assert run_id_of(item_event(1)) == RUN
    assert run_id_of(run_event(1, "RUNNING")) == RUN


async def test_stream_ends_after_the_runs_terminal_state() -> None:
    """`stream(after=1)` yields events 2..N and stops once the run has completed."""

    async def history(run_id: uuid.UUID, since: datetime) -> list[Event]:
        return [item_event(1, "submitted"), item_event(2), run_event(3, "COMPLETED")]

    hub = EventHub("http://127.0.0.1:9/api", history)
    hub.subscribed.set()
    hub.start = lambda: None  # type: ignore[method-assign]  # no Prefect here: the history is all there is

    messages = [m async for m in hub.stream(RUN, T0, after=1)]

    assert [(m["seq"], m["type"]) for m in messages] == [(2, "item.done"), (3, "run.completed")]


async def test_waiting_stream_wakes_for_a_live_event() -> None:
    """A stream that has sent everything wakes when the next live event arrives."""

    async def history(run_id: uuid.UUID, since: datetime) -> list[Event]:
        return [item_event(1, "submitted")]

    hub = EventHub("http://127.0.0.1:9/api", history)
    hub.subscribed.set()
    hub.start = lambda: None  # type: ignore[method-assign]
    stream = hub.stream(RUN, T0)
    assert (await anext(stream))["seq"] == 1

    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    hub.ingest(item_event(2))

    assert (await asyncio.wait_for(waiting, 5))["type"] == "item.done"
