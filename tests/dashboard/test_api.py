"""The dashboard API on a real Prefect server, `comfybatch serve` and real ComfyUI servers."""

import csv
import io
import uuid

import httpx
import pytest
from PIL import Image

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.deployments.catalog import GENERATE_BATCH as CATALOG_GENERATE_BATCH
from comfybatch.settings import Settings
from tests.dashboard.conftest import ALLOWED_ORIGIN, AUTH, DashboardPlatform, RenderedBatches, tiny_spec, wait_finished

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_launcher_deployment_name_is_the_catalog_one() -> None:
    """The launcher triggers the deployment the catalog serves (it may not import flows to read the name)."""
    assert GENERATE_BATCH == CATALOG_GENERATE_BATCH


async def test_created_batch_completes_with_every_item_done(rendered: RenderedBatches) -> None:
    """A batch created over the API completes and its journal counts every item done."""
    batch = rendered.first

    assert (batch["state"], batch["name"], batch["submitted_by"]) == ("COMPLETED", "dash-one", "ci")
    assert batch["counts"] == {"total": 2, "done": 2, "failed": 0, "pending": 0}


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


async def test_health_reports_prefect_and_each_comfyui(dashboard_platform: DashboardPlatform) -> None:
    """`/health` needs no key and reports the Prefect API and every configured ComfyUI server as ok."""
    urls = [server.url for server in dashboard_platform.fleet.servers]
    settings = Settings(**{"COMFYUI_URLS": ",".join(urls)})  # type: ignore[arg-type]
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        response = await http.get("/health")

    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "shim": "ok", "prefect": "ok", "comfyui": dict.fromkeys(urls, "ok")}
