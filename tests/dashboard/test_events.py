"""`WS /api/batches/{id}/events` on a live dashboard: numbered events, replay with `after`, authentication."""

import json
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.testing.live_app import serve_in_thread
from tests.dashboard.conftest import API_KEY, AUTH, DashboardPlatform, tiny_spec, wait_finished, wait_stored

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def _ws_url(base: str, batch_id: str, after: int = 0) -> str:
    return f"{base.replace('http://', 'ws://')}/api/batches/{batch_id}/events?after={after}"


async def _all_messages(url: str, **connect: Any) -> list[dict[str, Any]]:
    """Every message until the server closes the stream (the batch's run ended)."""
    async with websockets.connect(url, open_timeout=10, **connect) as socket:
        return [json.loads(frame) async for frame in socket]


@pytest.fixture(scope="module")
async def streamed(live_dashboard: str) -> tuple[str, list[dict[str, Any]]]:
    """A two-image batch created over HTTP and followed live from its first event to its end."""
    async with httpx.AsyncClient(base_url=live_dashboard, timeout=30) as http:
        created = await http.post("/api/batches", json=tiny_spec("dash-events", "an owl", "a lark"), headers=AUTH)
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]
    messages = await _all_messages(_ws_url(live_dashboard, batch_id), additional_headers=AUTH)
    return batch_id, messages


async def test_stream_numbers_events_from_one_without_gaps(streamed: tuple[str, list[dict[str, Any]]]) -> None:
    """Sequence numbers run 1..N in the order sent."""
    _, messages = streamed

    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


async def test_stream_reports_each_item_done_and_the_run_ending(streamed: tuple[str, list[dict[str, Any]]]) -> None:
    """Both items arrive as `item.done`, who submitted is named when the batch starts, and the last message is the
    run's completion."""
    _, messages = streamed
    types = [m["type"] for m in messages]

    assert len({m["key"] for m in messages if m["type"] == "item.done"}) == 2
    submitted = next(m for m in messages if m["type"] == "batch.started")
    assert submitted["by"] == "ci"
    assert types[-1] == "run.completed"


async def test_stream_carries_no_empty_run_event(streamed: tuple[str, list[dict[str, Any]]]) -> None:
    """Every `run.*` message names the run's state: no `{"type": "run.", "state": ""}` from other flow-run events."""
    _, messages = streamed
    runs = [m for m in messages if m["type"].startswith("run.")]

    unnamed = [m for m in runs if not m["state"] or m["type"] != f"run.{m['state'].lower()}"]

    assert runs, messages
    assert unnamed == []


async def test_events_seq_is_the_last_number_the_stream_sends(
    dashboard_platform: DashboardPlatform, streamed: tuple[str, list[dict[str, Any]]]
) -> None:
    """A dashboard that has not streamed the batch yet reports `events_seq` equal to the last `seq` its stream sends."""
    batch_id, _ = streamed
    await wait_stored(dashboard_platform.api_url, batch_id, "prefect.flow-run.Completed")
    settings = dashboard_platform.settings()
    with serve_in_thread(create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))) as fresh:
        async with httpx.AsyncClient(base_url=fresh, timeout=30) as http:
            status = (await http.get(f"/api/batches/{batch_id}", headers=AUTH)).json()
        messages = await _all_messages(_ws_url(fresh, batch_id), additional_headers=AUTH)

    assert messages
    assert status["events_seq"] == messages[-1]["seq"]


async def test_stream_of_a_batch_that_just_ended_ends(
    live_dashboard: str, dashboard_platform: DashboardPlatform
) -> None:
    """A dashboard started seconds after a batch ended (its last events not yet stored by Prefect) still streams
    the ending and closes."""
    async with httpx.AsyncClient(base_url=live_dashboard, timeout=30) as http:
        created = await http.post("/api/batches", json=tiny_spec("dash-just-ended", "a wren"), headers=AUTH)
        await wait_finished(http, created.json()["batch_id"])
    settings = dashboard_platform.settings()
    with serve_in_thread(create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))) as fresh:
        with anyio.fail_after(60):
            messages = await _all_messages(_ws_url(fresh, created.json()["batch_id"]), additional_headers=AUTH)

    assert messages[-1]["type"] == "run.completed"
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))


async def test_reconnect_after_n_replays_exactly_the_rest(
    live_dashboard: str, streamed: tuple[str, list[dict[str, Any]]]
) -> None:
    """A client that saw events 1..3 and reconnects with `after=3` receives events 4..N, identical."""
    batch_id, messages = streamed

    rest = await _all_messages(_ws_url(live_dashboard, batch_id, after=3), additional_headers=AUTH)

    assert rest == messages[3:]


async def test_first_message_auth_is_accepted(live_dashboard: str, streamed: tuple[str, list[dict[str, Any]]]) -> None:
    """Browsers cannot send headers: `{"type": "auth", "token": ...}` as the first message opens the stream."""
    batch_id, messages = streamed

    async with websockets.connect(_ws_url(live_dashboard, batch_id)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": API_KEY}))
        received = [json.loads(frame) async for frame in socket]

    assert received == messages


async def test_stream_without_key_is_closed_4401(
    live_dashboard: str, streamed: tuple[str, list[dict[str, Any]]]
) -> None:
    """A wrong key gets no event: the socket closes with 4401."""
    batch_id, _ = streamed

    async with websockets.connect(_ws_url(live_dashboard, batch_id)) as socket:
        await socket.send(json.dumps({"type": "auth", "token": "wrong"}))
        with pytest.raises(ConnectionClosed) as closed:
            await socket.recv()

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4401


def _samples(text: str, name: str) -> dict[str, float]:
    """`{labels: value}` of one metric in Prometheus text."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) :].rpartition(" ")
            found[labels] = float(value)
    return found


async def test_metrics_count_what_the_event_stream_saw(
    live_dashboard: str, streamed: tuple[str, list[dict[str, Any]]]
) -> None:
    """After a 2-image batch: done items counted, prompt seconds per server, one completed batch duration."""
    async with httpx.AsyncClient(base_url=live_dashboard, timeout=30) as http:
        text = (await http.get("/metrics")).text

    assert _samples(text, "comfybatch_item_events_total")['{state="done"}'] >= 2
    assert sum(_samples(text, "comfybatch_prompt_seconds_count").values()) >= 2
    assert _samples(text, "comfybatch_batch_seconds_count")['{state="completed"}'] >= 1


async def test_a_dry_run_is_estimated_from_the_fleets_latest_prompts(
    live_dashboard: str, streamed: tuple[str, list[dict[str, Any]]]
) -> None:
    """After a batch has rendered, Check of a new request (nothing stored for it) estimates its run time from the
    prompt times the dashboard saw, instead of showing none."""
    async with httpx.AsyncClient(base_url=live_dashboard, timeout=60) as http:
        checked = await http.post("/api/validate", json=tiny_spec("dash-estimate", "a heron", "a crane"),
                                  headers=AUTH)  # fmt: skip

    assert checked.status_code == 200, checked.text
    assert checked.json()["estimate_s"] > 0
