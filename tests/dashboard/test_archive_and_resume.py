"""Issue 13 §3: the batch's zip (bytes as stored), resuming an ended batch, and the list's stored counts."""

import csv
import hashlib
import io
import os
import uuid
import zipfile
from pathlib import Path

import anyio
import httpx
import pytest

from comfybatch.client import AsyncComfyBatchClient, ComfyBatchClient
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from tests.dashboard.conftest import (
    API_KEY,
    AUTH,
    DashboardPlatform,
    RenderedBatches,
    flaky_spec,
    tiny_spec,
    wait_finished,
)

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


def _asgi(platform: DashboardPlatform) -> httpx.ASGITransport:
    """A transport into a dashboard app of the platform, for the SDK."""
    settings = platform.settings()
    return httpx.ASGITransport(app=create_app(settings, Launcher(settings, api_url=platform.api_url)))


def _members(data: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert archive.testzip() is None  # every member's CRC holds
        return {info.filename: archive.read(info) for info in archive.infolist()}


async def test_archive_holds_each_image_byte_exact_and_the_manifest(
    client: httpx.AsyncClient, rendered: RenderedBatches, dashboard_platform: DashboardPlatform
) -> None:
    """Each image in the zip has the sha256 its manifest row records, one per output; the manifest is the stored one."""
    batch_id = rendered.first["batch_id"]

    response = await client.get(f"/api/batches/{batch_id}/archive.zip", headers=AUTH)

    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert f'filename="{rendered.first["name"]}.zip"' in response.headers["content-disposition"]
    members = _members(response.content)
    stored_manifest = (await client.get(f"/api/batches/{batch_id}/manifest", headers=AUTH)).content
    assert members.pop("manifest.csv") == stored_manifest
    assert members.pop("manifest.parquet")[:4] == b"PAR1"
    batch_dir = dashboard_platform.out / rendered.first["name"]
    expected = {}
    for row in csv.DictReader(io.StringIO(stored_manifest.decode())):
        for uri, sha in zip(row["outputs"].split(";"), row["sha256"].split(";"), strict=True):
            expected[Path(uri).relative_to(batch_dir).as_posix()] = sha
    assert len(expected) == 2
    assert {name: hashlib.sha256(data).hexdigest() for name, data in members.items()} == expected


async def test_archive_needs_the_key_and_a_known_batch(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """No key is 401; an unknown batch is 404 with a sentence."""
    no_key = await client.get(f"/api/batches/{rendered.first['batch_id']}/archive.zip")
    unknown = await client.get(f"/api/batches/{uuid.uuid4()}/archive.zip", headers=AUTH)

    assert no_key.status_code == 401
    assert unknown.status_code == 404
    assert "no batch" in unknown.json()["detail"]


async def test_sdk_download_archive_streams_the_same_zip(
    live_dashboard: str, rendered: RenderedBatches, tmp_path: Path
) -> None:
    """The async and the blocking SDK write the same bytes the route serves, as `<name>.zip` in a folder."""
    batch_id = rendered.second["batch_id"]
    async with httpx.AsyncClient(base_url=live_dashboard, headers=AUTH, timeout=30) as http:
        served = (await http.get(f"/api/batches/{batch_id}/archive.zip")).content

    async with AsyncComfyBatchClient(live_dashboard, API_KEY) as sdk:
        async_path = await sdk.download_archive(batch_id, tmp_path)

    def blocking_download() -> Path:
        with ComfyBatchClient(live_dashboard, API_KEY) as blocking:
            return blocking.download_archive(batch_id, tmp_path / "copy.zip")

    sync_path = await anyio.to_thread.run_sync(blocking_download)

    assert async_path == tmp_path / f"{rendered.second['name']}.zip"
    assert async_path.read_bytes() == sync_path.read_bytes() == served
    assert sorted(os.listdir(tmp_path)) == sorted([async_path.name, "copy.zip"])  # no .part left


async def test_retry_failed_resumes_the_batch_rendering_only_its_failed_item(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """A batch with one failed item resumes as a new run tagged resumed-from: the failed item is rendered, the done
    one is kept as stored; asking twice (the SDK's `retry_failed`) answers the same run, and a batch still under way
    or with nothing left is refused (409)."""
    name = f"dash-retry-{uuid.uuid4().hex[:6]}"
    created = await client.post("/api/batches", json=flaky_spec(name, dashboard_platform, tmp_path), headers=AUTH)
    assert created.status_code == 202, created.text
    first = await wait_finished(client, created.json()["batch_id"])
    assert (first["counts"]["done"], first["counts"]["failed"]) == (1, 1), first
    before = (await client.get(f"/api/batches/{first['batch_id']}/items", headers=AUTH)).json()["items"]

    resumed = await client.post(f"/api/batches/{first['batch_id']}/resume", headers=AUTH)
    async with AsyncComfyBatchClient("http://dashboard", API_KEY, transport=_asgi(dashboard_platform)) as sdk:
        again = await sdk.retry_failed(first["batch_id"])  # the SDK's name for the page's button
    refused_early = await client.post(f"/api/batches/{resumed.json()['batch_id']}/resume", headers=AUTH)
    second = await wait_finished(client, resumed.json()["batch_id"])
    old = (await client.get(f"/api/batches/{first['batch_id']}", headers=AUTH)).json()
    after = (await client.get(f"/api/batches/{second['batch_id']}/items", headers=AUTH)).json()["items"]
    nothing_left = await client.post(f"/api/batches/{second['batch_id']}/resume", headers=AUTH)

    assert resumed.status_code == 202, resumed.text
    assert again.batch_id == resumed.json()["batch_id"] != first["batch_id"]
    assert refused_early.status_code == 409, refused_early.text
    assert (second["name"], second["counts"]["done"], second["counts"]["failed"]) == (name, 2, 0), second
    assert second["resumed_from"] == first["batch_id"]
    assert old["resumed_as"] == second["batch_id"]
    assert [item["state"] for item in before] == ["done", "failed"]
    assert [item["state"] for item in after] == ["done", "done"]
    kept = (await client.get(before[0]["image"], headers=AUTH)).content
    assert (await client.get(after[0]["image"], headers=AUTH)).content == kept
    assert nothing_left.status_code == 409
    assert "nothing left" in nothing_left.json()["detail"]


async def test_an_ended_batch_names_its_resumed_run_at_once_after_a_shared_read(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform
) -> None:
    """A read of "resumed as" made just before the resume, shared with other readers for a moment, does not hide the
    new run: the ended batch names it on the next read."""
    name = f"dash-resumed-as-{uuid.uuid4().hex[:6]}"
    created = await client.post("/api/batches", json=tiny_spec(name, "a lighthouse"), headers=AUTH)
    assert created.status_code == 202, created.text
    batch_id = uuid.UUID((await wait_finished(client, created.json()["batch_id"]))["batch_id"])
    settings = dashboard_platform.settings()
    launcher = Launcher(settings, api_url=dashboard_platform.api_url)
    launcher.open()  # as the served app does: reads are shared
    try:
        run = await launcher.get(batch_id)
        before = await launcher.resumed_as(run)
        resumed = await launcher.resume(batch_id, "tester")
        after = await launcher.resumed_as(run)
    finally:
        await launcher.aclose()

    assert before is None
    assert after == resumed.id


async def test_resumed_item_image_is_served_once_rendered_even_after_an_early_read(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """The image of an item a resume renders again is served once it is stored, although the resumed run's journal
    was read (and its earlier failed record kept) before: the dashboard rereads a record an earlier run left."""
    name = f"dash-reread-{uuid.uuid4().hex[:6]}"
    created = await client.post("/api/batches", json=flaky_spec(name, dashboard_platform, tmp_path), headers=AUTH)
    first = await wait_finished(client, created.json()["batch_id"])
    failed_key = (await client.get(f"/api/batches/{first['batch_id']}/items", headers=AUTH)).json()["items"][1]["key"]
    resumed = (await client.post(f"/api/batches/{first['batch_id']}/resume", headers=AUTH)).json()["batch_id"]
    image = f"/api/batches/{resumed}/items/{failed_key}/image"
    early = await client.get(image, headers=AUTH)  # the resumed run has not rendered it yet
    async with httpx.AsyncClient(base_url=dashboard_platform.api_url, timeout=30) as prefect:
        with anyio.fail_after(120):
            for _ in iter(int, 1):  # Prefect's word, not the dashboard's: no status read refreshes its journal
                if (await prefect.get(f"/flow_runs/{resumed}")).json()["state_type"] in ("COMPLETED", "FAILED"):
                    break
                await anyio.sleep(0.5)

    late = await client.get(image, headers=AUTH)

    assert early.status_code == 404, early.text
    assert late.status_code == 200, late.text
    assert late.content[:8] == b"\x89PNG\r\n\x1a\n"


async def test_list_shows_counts_template_submitter_and_duration(
    client: httpx.AsyncClient, rendered: RenderedBatches
) -> None:
    """Each listed batch carries its stored counts, template, submitter and run time."""
    response = await client.get("/api/batches", params={"name": rendered.first["name"]}, headers=AUTH)

    (row,) = response.json()["batches"]
    assert (row["counts"]["total"], row["counts"]["done"], row["counts"]["failed"]) == (2, 2, 0)
    assert (row["template"], row["submitted_by"]) == ("txt2img-tiny", "ci")
    assert row["duration_s"] > 0
