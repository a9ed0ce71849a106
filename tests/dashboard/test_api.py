"""The dashboard API on a real Prefect server, `comfybatch serve` and real ComfyUI servers."""

import csv
import io
import time
import uuid
from collections import Counter
from typing import Any

import anyio
import httpx
import pytest
from PIL import Image

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.settings import Settings
from tests.dashboard.conftest import (
    ALLOWED_ORIGIN,
    AUTH,
    DashboardPlatform,
    RenderedBatches,
    prefect_history,
    slow_spec,
    tiny_spec,
    wait_finished,
    wait_stored,
)
from tests.support.graphs import fail, unique

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


async def test_created_batch_completes_with_every_item_done(rendered: RenderedBatches) -> None:
    """A batch created over the API completes and its journal counts every item done."""
    batch = rendered.first

    assert (batch["state"], batch["name"], batch["submitted_by"]) == ("COMPLETED", "dash-one", "ci")
    assert batch["counts"] == {"total": 2, "done": 2, "failed": 0, "cancelled": 0, "pending": 0}


async def test_items_list_the_files_of_the_batch(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """Each finished item is listed as done with one file and an image link."""
    response = await client.get(f"/api/batches/{rendered.first['batch_id']}/items", headers=AUTH)

    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert [(item["state"], item["files"]) for item in items] == [("done", 1), ("done", 1)]
    assert all(item["image"].endswith(f"/items/{item['key']}/image") for item in items)


async def test_image_route_returns_the_item_png(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """The image link of an item serves the PNG ComfyUI wrote, and `thumb=1` a PNG thumbnail."""
    items = (await client.get(f"/api/batches/{rendered.first['batch_id']}/items", headers=AUTH)).json()["items"]

    full = await client.get(items[0]["image"], headers=AUTH)
    thumb = await client.get(items[0]["image"], params={"thumb": "1"}, headers=AUTH)

    assert (full.status_code, full.headers["content-type"], full.content[:8]) == (200, "image/png", PNG_MAGIC)
    assert thumb.status_code == 200
    assert max(Image.open(io.BytesIO(thumb.content)).size) <= 256


async def test_manifest_downloads_as_csv(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """The manifest route serves the batch's CSV manifest with one row per job."""
    response = await client.get(f"/api/batches/{rendered.first['batch_id']}/manifest", headers=AUTH)

    assert response.status_code == 200, response.text
    rows = list(csv.reader(io.StringIO(response.text)))
    assert rows[0][:3] == ["index", "job_key", "key"]
    assert len(rows) == 3


async def test_list_filters_batches_by_name(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """Listing with `name=` returns only the batch of that name."""
    response = await client.get("/api/batches", params={"name": "dash-two"}, headers=AUTH)

    assert response.status_code == 200, response.text
    assert [batch["batch_id"] for batch in response.json()["batches"]] == [rendered.second["batch_id"]]


async def test_image_route_refuses_another_batch_key(client: httpx.AsyncClient, rendered: RenderedBatches) -> None:
    """An item key of the second batch finds no image under the first batch's id."""
    second_items = await client.get(f"/api/batches/{rendered.second['batch_id']}/items", headers=AUTH)
    foreign_key = second_items.json()["items"][0]["key"]

    response = await client.get(f"/api/batches/{rendered.first['batch_id']}/items/{foreign_key}/image", headers=AUTH)

    assert response.status_code == 404


@pytest.mark.parametrize(
    "key",
    ["..%2F..%2Fdash-two%2Fmanifest.csv", "%2Fetc%2Fpasswd", "%2E%2E", "dash-one%2Fmanifest.csv"],
    ids=["dotdot", "absolute", "dot-segment", "store-relative"],
)
async def test_image_route_refuses_path_tricks(client: httpx.AsyncClient, rendered: RenderedBatches, key: str) -> None:
    """A path in place of the item key never reaches the store: the answer is 404 without file content."""
    url = httpx.URL(f"http://dashboard/api/batches/{rendered.first['batch_id']}/items/{key}/image")

    response = await client.get(url, headers=AUTH)

    assert response.status_code == 404
    assert b"root:" not in response.content
    assert b"job_key" not in response.content


async def test_same_idempotency_key_returns_the_same_batch(client: httpx.AsyncClient) -> None:
    """Retrying a create with the same `Idempotency-Key` returns the first batch's id."""
    spec = {**tiny_spec("dash-idem", "a lonely tree"), "dry_run": True}
    headers = {**AUTH, "Idempotency-Key": uuid.uuid4().hex}

    first = await client.post("/api/batches", json=spec, headers=headers)
    again = await client.post("/api/batches", json=spec, headers=headers)

    assert (first.status_code, again.status_code) == (202, 202), again.text
    assert again.json()["batch_id"] == first.json()["batch_id"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"}], ids=["no-key", "wrong-key"])
async def test_api_requires_a_valid_key(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    """Without a valid bearer key an `/api` route answers 401 with a Bearer challenge."""
    response = await client.get("/api/batches", headers=headers)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(("origin", "allowed"), [(ALLOWED_ORIGIN, True), ("https://evil.example", False)])
async def test_cors_preflight_follows_the_allowlist(client: httpx.AsyncClient, origin: str, allowed: bool) -> None:
    """A preflight from an allowlisted origin is allowed; from any other origin it is not."""
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST",
               "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip

    response = await client.options("/api/batches", headers=headers)

    assert (response.headers.get("access-control-allow-origin") == origin) is allowed
    assert (response.status_code == 200) is allowed


async def test_unknown_batch_is_404(client: httpx.AsyncClient) -> None:
    """A flow run id Prefect does not know is answered with 404."""
    response = await client.get(f"/api/batches/{uuid.uuid4()}", headers=AUTH)

    assert response.status_code == 404


async def test_bad_body_is_422_naming_the_field(client: httpx.AsyncClient) -> None:
    """A batch whose name breaks the schema is refused with 422 naming `name`."""
    response = await client.post("/api/batches", json=tiny_spec("my batch", "a cat"), headers=AUTH)

    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", "name"]]


async def test_workflows_lists_the_templates(client: httpx.AsyncClient) -> None:
    """The bundled templates are offered by name."""
    response = await client.get("/api/workflows", headers=AUTH)

    assert response.status_code == 200
    assert "txt2img-tiny" in response.json()["workflows"]


async def test_cancel_stops_a_running_batch(client: httpx.AsyncClient) -> None:
    """Cancelling a batch moves its flow run to Cancelling and it ends Cancelled."""
    spec = {**tiny_spec("dash-cancel", *(f"a slow picture {i}" for i in range(40))), "defaults": {"steps": 20}}
    created = await client.post("/api/batches", json=spec, headers=AUTH)
    batch_id = created.json()["batch_id"]

    cancelled = await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)
    final = await wait_finished(client, batch_id, timeout_s=90)

    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["state"] in {"CANCELLING", "CANCELLED"}
    assert final["state"] == "CANCELLED"


async def _wait_state(http: httpx.AsyncClient, batch_id: str, state: str, *, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (body := (await http.get(f"/api/batches/{batch_id}", headers=AUTH)).json())["state"] != state:
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} not {state} within {timeout_s:g} s: {body}", pytrace=False)
        await anyio.sleep(0.2)


_EVENT_FLUSH_S = 6.0  # Prefect's event persister writes what it received at least every 5 s


async def test_cancel_of_a_finished_batch_is_409_and_writes_nothing(
    client: httpx.AsyncClient, rendered: RenderedBatches, dashboard_platform: DashboardPlatform
) -> None:
    """Cancelling a COMPLETED batch twice answers 409 naming its state both times; no state, no event is added."""
    batch_id = rendered.first["batch_id"]
    await wait_stored(dashboard_platform.api_url, batch_id, "prefect.flow-run.Completed")
    await anyio.sleep(_EVENT_FLUSH_S)  # and whatever arrived with it
    states_before, events_before = await prefect_history(dashboard_platform.api_url, batch_id)

    answers = [await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH) for _ in range(2)]
    await anyio.sleep(_EVENT_FLUSH_S)
    states_after, events_after = await prefect_history(dashboard_platform.api_url, batch_id)

    assert [answer.status_code for answer in answers] == [409, 409], answers[0].text
    assert all("COMPLETED" in answer.json()["detail"] for answer in answers)
    assert states_after == states_before
    assert Counter(events_after) == Counter(events_before)
    assert (await client.get(f"/api/batches/{batch_id}", headers=AUTH)).json()["state"] == "COMPLETED"


async def test_second_cancel_while_cancelling_adds_nothing(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform
) -> None:
    """A running batch cancelled twice gets one Cancelling state and one cancel request, and ends Cancelled once."""
    created = await client.post("/api/batches", json=slow_spec("dash-cancel-twice", "a", "b", "c", "d"), headers=AUTH)
    batch_id = created.json()["batch_id"]
    await _wait_state(client, batch_id, "RUNNING")

    first = await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)
    second = await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)
    final = await wait_finished(client, batch_id, timeout_s=90)
    await anyio.sleep(_EVENT_FLUSH_S)
    states, events = await prefect_history(dashboard_platform.api_url, batch_id)

    assert (first.status_code, second.status_code) == (202, 202), second.text
    assert (first.json()["state"], second.json()["state"]) == ("CANCELLING", "CANCELLING")
    assert final["state"] == "CANCELLED"
    assert (states.count("CANCELLING"), states.count("CANCELLED")) == (1, 1), states
    assert events.count("comfybatch.batch.cancel-requested") == 1, events


async def test_idempotency_key_with_another_body_is_422(client: httpx.AsyncClient) -> None:
    """A key already used for one request is refused for a different one, naming the key; the first still answers."""
    key = f"dash-idem-{uuid.uuid4().hex}"
    headers = {**AUTH, "Idempotency-Key": key}
    first_spec = {**tiny_spec("dash-idem-a", "a lonely tree"), "dry_run": True}

    first = await client.post("/api/batches", json=first_spec, headers=headers)
    other = await client.post("/api/batches", json={**first_spec, "name": "dash-idem-b"}, headers=headers)
    again = await client.post("/api/batches", json=first_spec, headers=headers)

    assert (first.status_code, other.status_code, again.status_code) == (202, 422, 202), other.text
    assert key in other.json()["detail"]
    assert again.json()["batch_id"] == first.json()["batch_id"]


async def test_concurrent_retries_with_different_bodies_create_one_batch(client: httpx.AsyncClient) -> None:
    """Two requests racing with one key and different bodies: one batch is created, the other request gets 422."""
    headers = {**AUTH, "Idempotency-Key": f"dash-race-{uuid.uuid4().hex}"}
    specs = [{**tiny_spec(f"dash-race-{n}", "a pond"), "dry_run": True} for n in ("a", "b")]
    answers: dict[str, httpx.Response] = {}

    async def post(spec: dict[str, Any]) -> None:
        answers[spec["name"]] = await client.post("/api/batches", json=spec, headers=headers)

    async with anyio.create_task_group() as group:
        for spec in specs:
            group.start_soon(post, spec)

    assert sorted(answer.status_code for answer in answers.values()) == [202, 422]
    winner = next(name for name, answer in answers.items() if answer.status_code == 202)
    listed = (await client.get("/api/batches", params={"name": winner}, headers=AUTH)).json()["batches"]
    loser = next(name for name in answers if name != winner)
    assert (await client.get("/api/batches", params={"name": loser}, headers=AUTH)).json()["batches"] == []
    assert len(listed) == 1


async def test_idempotency_key_is_checked_across_a_dashboard_restart(dashboard_platform: DashboardPlatform) -> None:
    """A new dashboard process finds the key's batch in Prefect: same body, same batch; another body, 422."""
    headers = {**AUTH, "Idempotency-Key": f"dash-restart-{uuid.uuid4().hex}"}
    spec = {**tiny_spec("dash-restart", "a quiet lake"), "dry_run": True}
    async with dashboard_platform.client() as before_restart:
        first = await before_restart.post("/api/batches", json=spec, headers=headers)

    async with dashboard_platform.client() as after_restart:
        other = await after_restart.post("/api/batches", json={**spec, "name": "dash-restart-b"}, headers=headers)
        again = await after_restart.post("/api/batches", json=spec, headers=headers)
        listed = (await after_restart.get("/api/batches", params={"name": "dash-restart"}, headers=AUTH)).json()

    assert (first.status_code, other.status_code, again.status_code) == (202, 422, 202), other.text
    assert headers["Idempotency-Key"] in other.json()["detail"]
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert [batch["batch_id"] for batch in listed["batches"]] == [first.json()["batch_id"]]


async def test_list_by_name_finds_a_batch_that_has_not_started(client: httpx.AsyncClient) -> None:
    """Right after creation the batch is listed under its own name, not a random Prefect run name."""
    name = f"dash-named-{uuid.uuid4().hex[:8]}"
    created = await client.post("/api/batches", json=slow_spec(name, "a"), headers=AUTH)
    batch_id = created.json()["batch_id"]
    try:
        listed = (await client.get("/api/batches", params={"name": name}, headers=AUTH)).json()["batches"]
    finally:
        await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)

    assert [(batch["batch_id"], batch["name"]) for batch in listed] == [(batch_id, name)]


async def test_deployment_not_served_is_503_with_retry_after(dashboard_platform: DashboardPlatform) -> None:
    """A Prefect server without the deployment answers creates with 503 and Retry-After, naming the deployment."""
    settings = dashboard_platform.settings()
    launcher = Launcher(settings, api_url=dashboard_platform.api_url, deployment="generate-batch/not-served")
    transport = httpx.ASGITransport(app=create_app(settings, launcher))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        response = await http.post("/api/batches", json=tiny_spec("dash-unserved", "a cat"), headers=AUTH)

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert "generate-batch/not-served" in response.json()["detail"]


async def test_health_reports_prefect_and_each_comfyui(dashboard_platform: DashboardPlatform) -> None:
    """`/health` needs no key and reports the Prefect API and every configured ComfyUI server as ok."""
    urls = [server.url for server in dashboard_platform.fleet.servers]
    settings = Settings(**{"COMFYUI_URLS": ",".join(urls)})  # type: ignore[arg-type]
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        response = await http.get("/health")

    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "shim": "ok", "prefect": "ok", "comfyui": dict.fromkeys(urls, "ok")}


async def test_a_failed_item_is_failed_in_the_status_with_its_reason(client: httpx.AsyncClient) -> None:
    """Issue 10 §6: a batch whose one job failed reports failed 1, pending 0, the failure's message, no server
    with a prompt in flight, and the item as failed (it stayed `submitted` before)."""
    spec = {"name": "dash-fails", "workflow": fail("boom in the sampler", unique("dash-fails")),
            "bindings": {"nonce": "2.inputs.nonce"}, "sweep": {"axes": {"nonce": [unique("n")]}}}  # fmt: skip
    batch_id = (await client.post("/api/batches", json=spec, headers=AUTH)).json()["batch_id"]

    final = await wait_finished(client, batch_id)
    items = (await client.get(f"/api/batches/{batch_id}/items", headers=AUTH)).json()["items"]

    assert final["state"] == "FAILED"
    assert (final["counts"]["failed"], final["counts"]["pending"]) == (1, 0)
    assert "boom in the sampler" in final["failures"][0]["error"]
    assert all(server["in_flight"] == 0 for server in final["servers"].values())
    assert [item["state"] for item in items] == ["failed"]
    assert final["reason"]


async def test_a_cancelled_batch_says_who_cancelled_and_which_items_were_not_rendered(
    client: httpx.AsyncClient,
) -> None:
    """Issue 10 §6: after a cancel mid-batch no item stays `submitted`; unfinished ones are `cancelled`, the status
    names who cancelled, and the manifest is written for what exists."""
    created = await client.post("/api/batches", json=slow_spec("dash-stopped", *(unique("s") for _ in range(6)),
                                                               seconds=2.0), headers=AUTH)  # fmt: skip
    batch_id = created.json()["batch_id"]
    deadline = time.monotonic() + 60
    while not any(item["state"] in ("submitted", "running") for item in
                  (await client.get(f"/api/batches/{batch_id}/items", headers=AUTH)).json()["items"]):  # fmt: skip
        assert time.monotonic() < deadline, "no item was submitted within 60 s"
        await anyio.sleep(0.3)

    await client.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)
    final = await wait_finished(client, batch_id, timeout_s=90)
    items = (await client.get(f"/api/batches/{batch_id}/items", headers=AUTH)).json()["items"]
    manifest = await client.get(f"/api/batches/{batch_id}/manifest", headers=AUTH)

    assert final["state"] == "CANCELLED"
    assert final["cancelled_by"] == "ci"
    assert final["counts"]["cancelled"] >= 1
    assert not [item for item in items if item["state"] in ("submitted", "running", "queued")]
    assert manifest.status_code == 200
    assert "cancelled by ci" in manifest.text


async def test_same_name_with_another_request_is_409_naming_the_difference(
    client: httpx.AsyncClient, rendered: RenderedBatches
) -> None:
    """Issue 10 §1 over the API: `dash-one` again with other defaults is refused by validate and create alike,
    naming `defaults`; no batch is created."""
    changed = {**tiny_spec("dash-one", "a red fox", "a blue jay"), "defaults": {"steps": 2}}
    before = len((await client.get("/api/batches?name=dash-one", headers=AUTH)).json()["batches"])

    answers = [await client.post(path, json=changed, headers=AUTH) for path in ("/api/validate", "/api/batches")]
    after = len((await client.get("/api/batches?name=dash-one", headers=AUTH)).json()["batches"])

    assert [answer.status_code for answer in answers] == [409, 409]
    assert all("defaults" in answer.json()["detail"] for answer in answers)
    assert after == before


async def test_a_new_version_renders_into_its_own_folder_and_serves_its_own_manifest(
    client: httpx.AsyncClient, rendered: RenderedBatches, dashboard_platform: DashboardPlatform
) -> None:
    """`new_version` under a taken name renders into `<name>.v2`; its manifest route serves that folder's rows,
    and the first version's files are untouched."""
    first_manifest = (dashboard_platform.out / "dash-two" / "manifest.csv").read_bytes()
    changed = {**tiny_spec("dash-two", "a green frog", "a cat"), "defaults": {"steps": 2}, "new_version": True}

    batch_id = (await client.post("/api/batches", json=changed, headers=AUTH)).json()["batch_id"]
    final = await wait_finished(client, batch_id)
    manifest = await client.get(f"/api/batches/{batch_id}/manifest", headers=AUTH)

    assert final["state"] == "COMPLETED"
    rows = list(csv.DictReader(io.StringIO(manifest.text)))
    assert [row["param.steps"] for row in rows] == ["2", "2"]
    assert all("dash-two.v2" in row["outputs"] for row in rows)
    assert (dashboard_platform.out / "dash-two" / "manifest.csv").read_bytes() == first_manifest
