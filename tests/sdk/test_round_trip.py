"""The SDK against the live dashboard: real Prefect server, `comfybatch serve`, ComfyUI fleet and uvicorn."""

import csv
import io
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from PIL import Image

from comfybatch.client import (
    AsyncComfyBatchClient,
    AuthenticationFailed,
    BatchEvent,
    BatchRejected,
    ComfyBatchClient,
)
from comfybatch.testing.proxy import TcpProxy
from tests.dashboard.conftest import API_KEY

pytestmark = pytest.mark.timeout(300)
TINY: dict[str, Any] = {"workflow": "txt2img-tiny", "width": 64, "height": 64, "steps": 1}


def _assert_complete_sequence(events: list[BatchEvent]) -> None:
    assert [event.seq for event in events] == list(range(1, len(events) + 1))
    assert events[-1].ends_run


def test_sync_round_trip_submit_events_wait_download(live_dashboard: str, tmp_path: Path) -> None:
    """Submit, follow every item to `item.done`, wait, and download one PNG per item plus the manifest."""
    with ComfyBatchClient(live_dashboard, API_KEY) as client:
        batch = client.submit_batch(["a red fox", "a blue jay"], **TINY)
        classic = client.submit_batch_tasks(
            ["a green frog"], width=64, height=64, batch_name=f"sdk-{uuid.uuid4().hex[:8]}"
        )

        events = list(client.events(batch))
        first, second = client.wait_for_batch([batch, classic], timeout=120)
        paths = client.download(batch, tmp_path / "fox")

    _assert_complete_sequence(events)
    items = {event.key for event in events if event.type == "item.done"}
    assert len(items) == 2
    assert (first.state, first.counts.done, second.state) == ("COMPLETED", 2, "COMPLETED")
    images, manifest = paths[:-1], paths[-1]
    assert sorted(path.name.split("_", 1)[1].removesuffix(".png") for path in images) == sorted(items)
    for path in images:
        with Image.open(path) as image:
            assert (image.format, image.size) == ("PNG", (64, 64))
    rows = list(csv.DictReader(io.StringIO(manifest.read_text(encoding="utf-8"))))
    assert manifest.name == "manifest.csv"
    assert len(rows) == 2


@pytest.mark.anyio
async def test_async_submit_with_a_sheet_upload(live_dashboard: str, tmp_path: Path) -> None:
    """A local CSV is uploaded and becomes one item per row; `validate` sees the same two jobs first."""
    sheet = tmp_path / "products.csv"
    sheet.write_text('prompt\n"a ceramic mug, studio light"\na leather wallet\n', encoding="utf-8")

    async with AsyncComfyBatchClient(live_dashboard, API_KEY) as client:
        report = await client.validate(sheet=sheet, **TINY)
        batch = await client.submit_batch(sheet=sheet, **TINY)
        status = await client.wait_for_batch(batch, timeout=120)
        items = await client.items(batch)

    assert (report.ok, report.total) == (True, 2)
    assert status.state == "COMPLETED"
    assert [item.prompt for item in items] == ["a ceramic mug, studio light", "a leather wallet"]
    assert all(item.state == "done" and item.image for item in items)


@pytest.mark.anyio
async def test_events_resume_after_a_dropped_connection(live_dashboard: str) -> None:
    """A connection cut mid-batch is reopened with `after=`: the events seen are 1..N, none twice, none missing."""
    port = urlsplit(live_dashboard).port
    assert port is not None
    async with TcpProxy(port) as proxy, AsyncComfyBatchClient(proxy.url, API_KEY) as client:
        batch = await client.submit_batch(["an owl", "a lark", "a wren"], **TINY)
        seen: list[BatchEvent] = []
        cut_at = None
        async for event in client.events(batch):
            seen.append(event)
            if cut_at is None:
                cut_at = datetime.now().astimezone()
                proxy.cut()  # the run is only starting: its end must come over a new connection
        reference = [event async for event in client.events(batch)]

    _assert_complete_sequence(seen)
    assert seen == reference
    assert cut_at is not None
    assert datetime.fromisoformat(seen[-1].occurred) > cut_at


@pytest.mark.anyio
async def test_events_break_and_continue_with_after(live_dashboard: str) -> None:
    """Stopping an iteration and starting another with `after=<last seq>` continues exactly where it stopped."""
    async with AsyncComfyBatchClient(live_dashboard, API_KEY) as client:
        batch = await client.submit_batch(["a heron"], **TINY)
        head: list[BatchEvent] = []
        async for event in client.events(batch):
            head.append(event)
            if len(head) == 2:
                break
        tail = [event async for event in client.events(batch, after=head[-1].seq)]
        everything = [event async for event in client.events(batch)]

    assert head + tail == everything
    _assert_complete_sequence(everything)


@pytest.mark.anyio
async def test_wrong_key_raises_authentication_failed(live_dashboard: str) -> None:
    """A wrong key is refused over HTTP (401) and on the event stream (4401); the key is in no message."""
    wrong = "wrong-key-5f0e2a"
    async with AsyncComfyBatchClient(live_dashboard, wrong) as client:
        with pytest.raises(AuthenticationFailed) as http_refused:
            await client.submit_batch(["a fox"], **TINY)
        with pytest.raises(AuthenticationFailed) as stream_refused:
            [event async for event in client.events(str(uuid.uuid4()))]

    assert http_refused.value.status_code == 401
    assert stream_refused.value.status_code == 4401
    for refused in (http_refused.value, stream_refused.value):
        assert wrong not in str(refused)
        assert wrong not in repr(refused)


@pytest.mark.anyio
async def test_rejected_request_names_the_field(live_dashboard: str) -> None:
    """The dashboard's 400 (unknown template) and 422 (out-of-range field) become `BatchRejected` with the field."""
    async with AsyncComfyBatchClient(live_dashboard, API_KEY) as client:
        with pytest.raises(BatchRejected) as unknown:
            await client.validate(["a fox"], workflow="no-such-template")
        with pytest.raises(BatchRejected) as out_of_range:
            await client.submit_batch(["a fox"], images_per_item=0, **TINY)

    assert (unknown.value.status_code, [p.field for p in unknown.value.problems]) == (400, ["workflow"])
    assert out_of_range.value.status_code == 422
    assert [p.field for p in out_of_range.value.problems] == ["images_per_item"]


@pytest.mark.anyio
async def test_submit_with_local_images_uploads_them_and_renders_one_item_each(
    live_dashboard: str, tmp_path: Path
) -> None:
    """Issue 14 in the SDK: `submit_batch(images=[...])` uploads local files first; each becomes one item whose
    output (the `upscale` template) is its input at twice the size."""
    paths = []
    for name, colour in (("mug", (250, 10, 10)), ("wallet", (10, 10, 250))):
        paths.append(tmp_path / f"{name}.png")
        Image.new("RGB", (10, 8), colour).save(paths[-1])

    async with AsyncComfyBatchClient(live_dashboard, API_KEY) as client:
        batch = await client.submit_batch(
            images=paths, workflow="upscale", batch_name=f"sdk-images-{uuid.uuid4().hex[:6]}"
        )
        status = await client.wait_for_batch(batch, timeout=120)
        downloaded = await client.download(batch, tmp_path / "out")

    assert status.state == "COMPLETED"
    sizes = []
    for path in sorted(p for p in downloaded if p.suffix == ".png"):
        with Image.open(path) as image:
            sizes.append(image.size)
    assert sizes == [(20, 16), (20, 16)]
