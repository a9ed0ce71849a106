"""Requests before and around a batch: the dry run, uploads, what the API refuses, quotas, who cancelled."""

import io
from collections.abc import AsyncIterator

import anyio
import httpx
import pytest
from PIL import Image

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH, DashboardPlatform, slow_spec, tiny_spec, wait_finished

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.fixture
async def quota_client(dashboard_platform: DashboardPlatform) -> AsyncIterator[httpx.AsyncClient]:
    """The dashboard with a quota of 3 queued images per key."""
    base = dashboard_platform.settings()
    settings = Settings(output_root=base.output_root, api_keys={"ci": API_KEY}, api_quota_images=3)
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        yield http


async def test_validate_counts_jobs_each_server_can_run(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform
) -> None:
    """The dry run of a valid request: every job runs on every server, nothing is rendered."""
    response = await client.post("/api/validate", json=tiny_spec("dash-validate", "a fox", "a jay"), headers=AUTH)

    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["ok"], report["total"], report["invalid"]) == (True, 2, [])
    assert sorted(report["per_server"].values()) == [2] * len(dashboard_platform.fleet.servers)
    assert not (dashboard_platform.out / "dash-validate").exists()


async def test_validate_names_the_checkpoint_no_server_has(client: httpx.AsyncClient) -> None:
    """A checkpoint missing on every server is a 400 naming the field, the value and what the fleet has."""
    spec = {**tiny_spec("dash-no-ckpt", "a fox"), "defaults": {"steps": 1, "checkpoint": "absent.safetensors"}}

    response = await client.post("/api/validate", json=spec, headers=AUTH)

    assert response.status_code == 400, response.text
    [problem] = response.json()["problems"]
    assert problem["field"] == "defaults.checkpoint"
    assert "'absent.safetensors' is not one of" in problem["message"]
    assert "comfybatch-tiny-sd15.ckpt" in problem["message"]


@pytest.mark.parametrize(
    ("change", "field"),
    [({"workflow": "/srv/workflows/secret.json"}, "workflow"), ({"output": "/srv/elsewhere"}, "output"),
     ({"sheet": "/etc/rows.csv"}, "sheet")],
)  # fmt: skip
async def test_api_refuses_paths_on_the_dashboard_machine(
    client: httpx.AsyncClient, change: dict[str, str], field: str
) -> None:
    """Workflow files, output folders and sheets a client names are refused with 400 naming the field."""
    response = await client.post("/api/batches", json={**tiny_spec("dash-paths", "a fox"), **change}, headers=AUTH)

    assert response.status_code == 400, response.text
    assert [problem["field"] for problem in response.json()["problems"]] == [field]


async def test_uploaded_sheet_is_what_a_request_expands(client: httpx.AsyncClient) -> None:
    """A CSV uploaded with PUT is stored and read; validating a request naming it counts one job per row."""
    csv = "prompt,seed\na red fox,1\na blue jay,2\na green frog,3\n"
    uploaded = await client.put("/api/uploads/animals.csv", content=csv, headers={**AUTH, "content-type": "text/csv"})
    assert uploaded.status_code == 201, uploaded.text
    spec = {"name": "dash-sheet", "workflow": "txt2img-tiny", "sheet": uploaded.json()["sheet"],
            "defaults": {"steps": 1}}  # fmt: skip

    report = await client.post("/api/validate", json=spec, headers=AUTH)

    assert (uploaded.json()["rows"], uploaded.json()["columns"]) == (3, ["prompt", "seed"])
    assert report.status_code == 200, report.text
    assert report.json()["total"] == 3


async def test_quota_refuses_a_batch_beyond_the_keys_queued_images(quota_client: httpx.AsyncClient) -> None:
    """With 2 images queued and a quota of 3, a request for 2 more is refused with 429 naming the numbers."""
    first = await quota_client.post("/api/batches", json=slow_spec("dash-quota-one", "a", "b"), headers=AUTH)
    assert first.status_code == 202, first.text
    try:
        second = await quota_client.post("/api/batches", json=slow_spec("dash-quota-two", "c", "d"), headers=AUTH)
    finally:
        await quota_client.post(f"/api/batches/{first.json()['batch_id']}/cancel", headers=AUTH)

    assert second.status_code == 429, second.text
    assert "2 image(s) queued" in second.json()["detail"]
    assert "quota of 3" in second.json()["detail"]


async def test_items_list_every_planned_job_with_its_prompt_before_it_runs(client: httpx.AsyncClient) -> None:
    """Once the flow has stored its plan (before its first prompt ends), items list all jobs in order with their
    prompts, not only the started ones; before that they say `planned: false` rather than expanding the request."""
    prompts = ["a slow heron", "a slow crane", "a slow stork"]
    created = await client.post("/api/batches", json=slow_spec("dash-planned", *prompts), headers=AUTH)
    batch_id = created.json()["batch_id"]
    try:
        with anyio.fail_after(60):
            while not (items := (await client.get(f"/api/batches/{batch_id}/items", headers=AUTH)).json())["planned"]:
                assert items["total"] == 0  # the journal's jobs only: none has started
                await anyio.sleep(0.2)
    finally:
        await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)

    assert items["total"] == 3
    assert [item["index"] for item in items["items"]] == [0, 1, 2]
    assert {item["state"] for item in items["items"]} <= {"queued", "submitted"}


async def test_who_cancelled_is_recorded(client: httpx.AsyncClient) -> None:
    """The status of a cancelled batch names the key that cancelled it."""
    created = await client.post("/api/batches", json=slow_spec("dash-who", "x"), headers=AUTH)
    batch_id = created.json()["batch_id"]

    await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)
    final = await wait_finished(client, batch_id, timeout_s=90)

    assert (final["state"], final["cancelled_by"], final["submitted_by"]) == ("CANCELLED", "ci", "ci")


async def test_an_uploaded_image_is_what_an_image_in_batch_renders(client: httpx.AsyncClient) -> None:
    """Issue 14 over the API: `PUT /api/uploads/<name>.png` stores a checked image; a batch naming it in `images`
    renders one item from it with the `upscale` template, while a local path in `images` is refused naming the
    entry, and bytes that are no image are refused before anything is kept."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    png = {**AUTH, "content-type": "image/png"}

    uploaded = await client.put("/api/uploads/red.png", content=buffer.getvalue(), headers=png)
    not_image = await client.put("/api/uploads/fake.png", content=b"not a picture", headers=png)
    local = await client.post("/api/validate", headers=AUTH, json={
        "name": "dash-image-local", "workflow": "upscale", "images": ["/etc/hostname"]})  # fmt: skip
    created = await client.post("/api/batches", headers=AUTH, json={
        "name": "dash-image-in", "workflow": "upscale", "images": [uploaded.json()["image"]]})  # fmt: skip
    final = await wait_finished(client, created.json()["batch_id"])

    assert uploaded.status_code == 201, uploaded.text
    assert (uploaded.json()["width"], uploaded.json()["height"]) == (8, 6)
    assert not_image.status_code == 400
    assert "not an image" in not_image.json()["detail"]
    assert local.status_code == 400
    assert local.json()["problems"][0]["field"] == "images[0]"
    assert final["state"] == "COMPLETED", final
    assert final["counts"]["done"] == 1
