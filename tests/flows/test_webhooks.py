"""Signed webhooks of a real batch on real ComfyUI and Prefect, to a real HTTP receiver on loopback."""

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from prefect import tags
from prefect.client.orchestration import get_client
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventNameFilter, EventOccurredFilter

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
from comfybatch.notify.webhooks import BatchWebhooks
from comfybatch.settings import Settings, get_settings
from comfybatch.tasks.events import emit_batch_event
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support.webhook_receiver import SECRET, Receiver, running_receiver

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    with running_receiver() as (state, base):
        yield state, f"{base}/hooks/comfybatch?token=abc"


async def _attempt_events(batch: str, expected: int) -> list[tuple[str, str, int]]:
    """(event, webhook_id, attempt) of the batch's stored `comfybatch.webhook.*` events, once `expected` are stored
    (Prefect's persister writes every few seconds); what is there after 60 s otherwise."""
    now = datetime.now(UTC)
    event_filter = EventFilter(
        occurred=EventOccurredFilter(since=now - timedelta(hours=1), until=now + timedelta(hours=1)),
        event=EventNameFilter(prefix=["comfybatch.webhook."]),
        any_resource=EventAnyResourceFilter(id=[f"comfybatch.batch.{batch}"]),
    )
    found: list[tuple[str, str, int]] = []
    for _ in range(60):
        async with get_client() as prefect:
            page = await prefect.read_events(event_filter, limit=50)
        found = [(e.event, e.payload["webhook_id"], e.payload["attempt"]) for e in page.events]
        if len(found) >= expected:
            break
        await anyio.sleep(1)
    return sorted(found, key=lambda item: (item[1], item[2]))


def _exists(uri: str) -> bool:
    return Path(uri).is_file()


def _webhook_settings(monkeypatch: pytest.MonkeyPatch, **extra: str) -> Settings:
    monkeypatch.setenv("COMFYBATCH_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("COMFYBATCH_WEBHOOK_ALLOW_PRIVATE", "true")  # the receiver is on loopback
    for name, value in extra.items():
        monkeypatch.setenv(f"COMFYBATCH_{name.upper()}", value)
    get_settings.cache_clear()
    return get_settings()


async def test_batch_webhooks_are_signed_and_retried_under_one_id(
    batch_settings: Settings, comfy_fleet: SuiteFleet, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that answers 500 twice, then 200, gets batch.started, each item.done and batch.finished (counts,
    manifest), every attempt correctly signed and each message's attempts under one webhook-id."""
    state, url = receiver
    _webhook_settings(monkeypatch)
    spec = BatchSpec(name="hooked", workflow="txt2img-tiny", prompts=["a red kite", "a blue kite"],
                     defaults={"steps": 1}, servers=server_names(comfy_fleet), webhook=url,
                     webhook_items=True)  # fmt: skip

    report = await generate_batch(spec)

    delivered = state.delivered()
    assert report.done == 2
    assert sorted(delivered) == ["batch.finished", "batch.started", "item.done"]
    assert len(delivered["item.done"]) == 2
    assert all(d.signature_ok for d in state.deliveries)
    attempts = Counter(d.webhook_id for d in state.deliveries)
    # 500, 500, then 200 under the same id (the suite runs stamina in testing mode: 3 attempts, no sleeps).
    assert set(attempts.values()) == {3}
    finished = delivered["batch.finished"][0].body["data"]
    assert (finished["batch"], finished["done"], finished["failed"]) == ("hooked", 2, 0)
    assert any(uri.endswith("manifest.parquet") and _exists(uri) for uri in finished["manifest"])
    started = delivered["batch.started"][0].body
    assert started["data"]["total"] == 2
    assert started["timestamp"].endswith("Z")
    events = await _attempt_events("hooked", expected=12)
    assert Counter(name for name, _, _ in events) == {"comfybatch.webhook.failed": 8, "comfybatch.webhook.delivered": 4}
    assert [attempt for _, _, attempt in events] == [1, 2, 3] * 4


async def test_an_api_keys_webhook_hears_the_batches_it_submits(
    batch_settings: Settings, comfy_fleet: SuiteFleet, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run tagged `submitted-by:alice` (as the API starts it) notifies alice's configured webhook, without items."""
    state, url = receiver
    state.failures = 0
    _webhook_settings(monkeypatch, api_key_webhooks=f"alice:{url}")
    spec = BatchSpec(name="hooked-key", workflow="txt2img-tiny", prompts=["a white kite"], defaults={"steps": 1},
                     servers=server_names(comfy_fleet))  # fmt: skip

    with tags("submitted-by:alice"):
        report = await generate_batch(spec)

    assert report.done == 1
    assert [d.body["type"] for d in state.deliveries] == ["batch.started", "batch.finished"]
    assert all(d.signature_ok for d in state.deliveries)


async def test_a_hanging_receiver_does_not_hold_the_batch(
    batch_settings: Settings, comfy_fleet: SuiteFleet, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver that never answers leaves the batch to finish: the run returns while its request is still held."""
    state, url = receiver
    state.hang = True
    _webhook_settings(monkeypatch, webhook_timeout_s="600", webhook_drain_s="1")
    spec = BatchSpec(name="hooked-slow", workflow="txt2img-tiny", prompts=["a green kite"], defaults={"steps": 1},
                     servers=server_names(comfy_fleet), webhook=url)  # fmt: skip

    report = await generate_batch(spec)

    assert report.done == 1
    assert state.holding == 1  # batch.started is still waiting for its answer
    assert [d.body["type"] for d in state.deliveries] == ["batch.started"]


async def test_a_receiver_that_answers_410_gets_nothing_more(
    prefect_api: str, receiver: tuple[Receiver, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`410 Gone` is final (Standard Webhooks): that message is not retried and later messages are not sent."""
    state, url = receiver
    state.failures, state.failure_status = 100, 410
    settings = _webhook_settings(monkeypatch)
    spec = BatchSpec(name="hooked-gone", workflow="txt2img-tiny", webhook=url)

    async with BatchWebhooks.for_run(spec, settings, run_id="run-gone"):
        emit_batch_event("hooked-gone", "started", total=1, skipped=0)
        emit_batch_event("hooked-gone", "finished", done=1, failed=0)

    assert [(d.body["type"], d.status) for d in state.deliveries] == [("batch.started", 410)]
