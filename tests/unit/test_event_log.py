"""The dashboard's per-batch event log: the engine's numbers, released without gaps or repeats, closed once."""

import asyncio
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from prefect.events.schemas.events import Event, RelatedResource, Resource

from comfybatch.dashboard import events as hub_module
from comfybatch.dashboard.events import BatchLog, EventHub, run_id_of

pytestmark = pytest.mark.anyio
RUN = uuid.uuid4()
T0 = datetime.now(UTC) - timedelta(minutes=1)
LONG_AGO = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def item_event(seq: int | None, state: str = "done", key: str = "k", *, at: datetime = T0) -> Event:
    payload: dict[str, object] = {"key": key, "state": state}
    if seq is not None:
        payload["seq"] = seq
    return Event(
        event=f"comfybatch.item.{state}", occurred=at + timedelta(seconds=seq or 0),
        resource=Resource({"prefect.resource.id": "comfybatch.batch.b"}),
        related=[RelatedResource({"prefect.resource.id": f"prefect.flow-run.{RUN}",
                                  "prefect.resource.role": "flow-run"})],
        payload=payload,
    )  # fmt: skip


def finished_event(seq: int, *, at: datetime = T0) -> Event:
    event = item_event(seq, at=at)
    return event.model_copy(update={"event": "comfybatch.batch.finished", "payload": {"seq": seq, "done": 1}})


def run_event(state_type: str, *, at: datetime = T0) -> Event:
    return Event(event=f"prefect.flow-run.{state_type.title()}", occurred=at + timedelta(seconds=30),
                 resource=Resource({"prefect.resource.id": f"prefect.flow-run.{RUN}",
                                    "prefect.state-type": state_type,
                                    "prefect.state-name": state_type.title()}))  # fmt: skip


def numbered(log: BatchLog) -> list[tuple[int, str]]:
    return [(m["seq"], m["type"]) for m in log.messages]


def test_events_are_released_in_the_engines_order_whatever_the_arrival_order() -> None:
    """Number 3 arriving before 2 waits for it: the messages are 1, 2, 3 in every replica."""
    log = BatchLog()
    for seq in (1, 3, 2):
        log.add(item_event(seq, key=f"k{seq}"))

    assert [m["key"] for m in log.messages] == ["k1", "k2", "k3"]
    assert [m["seq"] for m in log.messages] == [1, 2, 3]


def test_a_repeated_or_unnumbered_event_adds_nothing() -> None:
    """A second delivery of number 1, and another process's unnumbered audit event, are not messages."""
    log = BatchLog()

    added = [log.add(item_event(1)), log.add(item_event(1)), log.add(item_event(None))]

    assert added == [True, False, False]
    assert numbered(log) == [(1, "item.done")]


def test_a_missing_number_holds_back_later_ones_until_the_history_is_complete() -> None:
    """With 2 missing, 3 waits; a complete history read that still lacks 2 gives it up and releases 3."""
    log = BatchLog()
    log.add(item_event(1))
    log.add(item_event(3))
    assert log.latest == 1
    assert log.wait_s() is not None

    log.settle([item_event(1)], complete=True)

    assert [m["seq"] for m in log.messages] == [1, 3]
    assert log.wait_s() is None


def test_the_run_closes_after_the_engines_last_event() -> None:
    """Prefect's Completed arriving before `batch.finished` waits for it; then `run.completed` is the next number."""
    log = BatchLog()
    log.add(item_event(1))
    log.add(run_event("COMPLETED"))
    assert not log.ended

    log.add(finished_event(2))

    assert numbered(log) == [(1, "item.done"), (2, "batch.finished"), (3, "run.completed")]
    assert log.ended


def test_a_run_that_died_without_its_last_event_closes_once_the_history_is_complete() -> None:
    """A SIGKILLed engine never sends `batch.finished`: the stored history decides where `run.crashed` goes."""
    log = BatchLog()
    log.add(item_event(1))
    log.add(run_event("CRASHED"))

    log.settle([item_event(1), item_event(2)], complete=True)

    assert numbered(log) == [(1, "item.done"), (2, "item.done"), (3, "run.crashed")]


def test_non_terminal_prefect_states_are_not_messages() -> None:
    """Running and Cancelling from Prefect only tell the log about the run; the engine numbers what it streams."""
    log = BatchLog()

    assert not log.add(run_event("RUNNING"))
    assert log.messages == []


def test_run_id_comes_from_the_flow_run_resource_or_a_related_one() -> None:
    """Engine events name the run as a related resource; Prefect's state events as their resource."""
    assert run_id_of(item_event(1)) == RUN
    assert run_id_of(run_event("RUNNING")) == RUN


def _offline_hub(stored: list[Event]) -> EventHub:
    async def history(run_id: uuid.UUID, since: datetime) -> list[Event]:
        return [event for event in stored if event.occurred >= since]

    hub = EventHub("http://127.0.0.1:9/api", history)
    hub.subscribed.set()
    hub.start = lambda: None  # type: ignore[method-assign]  # no Prefect here: the history is all there is
    return hub


async def test_stream_of_a_long_ended_run_replays_after_and_closes() -> None:
    """`stream(after=1)` of a run that ended long ago yields 2..N at once and stops after `run.completed`."""
    hub = _offline_hub([item_event(1, "submitted", at=LONG_AGO), item_event(2, at=LONG_AGO),
                        finished_event(3, at=LONG_AGO), run_event("COMPLETED", at=LONG_AGO)])  # fmt: skip

    messages = [m async for m in hub.stream(RUN, LONG_AGO, after=1)]

    assert [(m["seq"], m["type"]) for m in messages] == [(2, "item.done"), (3, "batch.finished"),
                                                          (4, "run.completed")]  # fmt: skip


async def test_two_hubs_number_a_crashed_run_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    """One hub saw the run live, the other only reads the store: both close the crashed run with the same number."""
    monkeypatch.setattr(hub_module, "_PERSIST_LAG_S", 0.05)
    stored = [item_event(1), item_event(2), run_event("CRASHED")]
    live, late = _offline_hub(stored), _offline_hub(stored)
    live.ingest(stored[0])  # this one missed number 2 live

    from_live = [m async for m in live.stream(RUN, T0)]
    from_late = [m async for m in late.stream(RUN, T0)]

    assert from_live == from_late
    assert [m["type"] for m in from_live] == ["item.done", "item.done", "run.crashed"]


async def test_waiting_stream_wakes_for_a_live_event() -> None:
    """A stream that has sent everything wakes when the next live event arrives."""
    hub = _offline_hub([item_event(1, "submitted")])
    stream = hub.stream(RUN, T0)
    assert (await anext(stream))["seq"] == 1

    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    hub.ingest(item_event(2))

    assert (await asyncio.wait_for(waiting, 5))["type"] == "item.done"


def test_a_crashed_run_that_runs_again_reopens_its_log() -> None:
    """Closed by `run.crashed` (3), the log takes the re-executed engine's events from 4 and closes at its end."""
    log = BatchLog()
    log.add(item_event(1))
    log.add(run_event("CRASHED"))
    log.settle([item_event(1), item_event(2)], complete=True)
    assert log.ended

    log.add(run_event("RUNNING"))
    log.add(item_event(4))
    log.add(finished_event(5))
    log.add(run_event("COMPLETED"))

    assert numbered(log) == [(1, "item.done"), (2, "item.done"), (3, "run.crashed"), (4, "item.done"),
                             (5, "batch.finished"), (6, "run.completed")]  # fmt: skip
    assert log.ended


def test_a_replica_reading_a_rerun_from_history_does_not_close_it_at_the_crash() -> None:
    """Crashed then Running again in the stored history: the log waits for the rerun's end instead of closing."""
    log = BatchLog()
    rerun = run_event("RUNNING").model_copy(update={"occurred": run_event("CRASHED").occurred + timedelta(seconds=5)})

    log.settle([item_event(1), run_event("CRASHED"), rerun, item_event(3)], complete=True)

    assert not log.ended
    assert [m["seq"] for m in log.messages] == [1, 3]
