"""The dashboard and `comfybatch serve` with the output store on S3 (moto's standalone server on loopback): an image
uploaded over the API is kept on S3, a batch reads it there and writes there, and the dashboard serves the result,
an animated one with its media type (the SDK downloads it as such)."""

import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from comfybatch.client import AsyncComfyBatchClient
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.dashboard.conftest import ALLOWED_ORIGIN, API_KEY, AUTH, wait_finished
from tests.flows.test_image_inputs import INVERT
from tests.platform.conftest import serve_env, serving
from tests.support.s3 import MOTO_KEYS, moto_s3, use_s3

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def s3_settings(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Settings]:
    """`comfybatch serve` writing to a fresh bucket, and the dashboard's settings for the same bucket."""
    root = tmp_path_factory.mktemp("s3-dashboard")
    with moto_s3() as endpoint, pytest.MonkeyPatch.context() as patch:
        bucket = use_s3(patch, endpoint)  # for this process: the dashboard reads the store too
        output_root = f"s3://{bucket}/out"
        aws = {"AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1", **MOTO_KEYS}
        env = {**serve_env(platform_prefect.api_url, comfy_fleet, root, **aws), "COMFYBATCH_OUTPUT_ROOT": output_root}
        with serving(platform_prefect.api_url, env, root, GENERATE_BATCH):
            yield Settings(output_root=output_root, api_keys={"ci": API_KEY}, cors_origins=[ALLOWED_ORIGIN])


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_uploaded_image_renders_on_s3_and_the_dashboard_serves_it(
    s3_settings: Settings, platform_prefect: LocalPrefectServer, tmp_path: Path
) -> None:
    """PUT /api/uploads keeps the image on S3; the batch reads it there, writes its output, manifest and contact
    sheet there, and the item's image link serves the inverted PNG read back from S3."""
    app = create_app(s3_settings, Launcher(s3_settings, api_url=platform_prefect.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        uploaded = await http.put("/api/uploads/teal.png", content=_png((0, 128, 128)),
                                  headers={**AUTH, "Content-Type": "image/png"})  # fmt: skip
        assert uploaded.status_code == 201, uploaded.text
        image = uploaded.json()["image"]
        created = await http.post("/api/batches", headers=AUTH,
                                  json={"name": "s3-dash", "workflow": INVERT, "images": [image]})  # fmt: skip
        assert created.status_code == 202, created.text
        batch = await wait_finished(http, created.json()["batch_id"])
        items = (await http.get(f"/api/batches/{batch['batch_id']}/items", headers=AUTH)).json()["items"]
        served = await http.get(items[0]["image"], headers=AUTH)

    store = OutputStore(s3_settings.output_root)
    manifest = read_manifest(store, "s3-dash")
    assert image.startswith(f"{s3_settings.output_root}/.uploads/")
    assert (batch["state"], batch["counts"]["done"]) == ("COMPLETED", 1)
    assert manifest is not None
    assert store.exists("s3-dash/contact_sheet.png")
    assert served.status_code == 200
    assert served.content == store.read_bytes(str(store.relpath_of(manifest["outputs"][0][0])))
    with Image.open(io.BytesIO(served.content)) as output:
        red, green, blue = output.convert("RGB").getpixel((4, 4))  # type: ignore[misc]
    assert all(abs(a - b) <= 1 for a, b in zip((red, green, blue), (255, 127, 127), strict=True))  # float rounding


async def test_animated_output_is_served_and_downloaded_as_webp(
    s3_settings: Settings, platform_prefect: LocalPrefectServer, tmp_path: Path
) -> None:
    """An animated-tiny item's link serves its animated WebP as image/webp, its thumbnail is a PNG of the first frame,
    and the SDK downloads it as a .webp file, bytes as stored."""
    app = create_app(s3_settings, Launcher(s3_settings, api_url=platform_prefect.api_url))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        body = {"name": "s3-animated", "workflow": "animated-tiny", "prompts": ["a boat"]}
        created = await http.post("/api/batches", headers=AUTH, json=body)
        assert created.status_code == 202, created.text
        batch = await wait_finished(http, created.json()["batch_id"])
        items = (await http.get(f"/api/batches/{batch['batch_id']}/items", headers=AUTH)).json()["items"]
        served = await http.get(items[0]["image"], headers=AUTH)
        thumb = await http.get(items[0]["image"], params={"thumb": "1"}, headers=AUTH)
    async with AsyncComfyBatchClient("http://dashboard", API_KEY, transport=transport) as sdk:
        downloaded = await sdk.download(batch["batch_id"], tmp_path / "down")

    assert (batch["state"], served.status_code, served.headers["content-type"]) == ("COMPLETED", 200, "image/webp")
    with Image.open(io.BytesIO(served.content)) as animation:
        assert (animation.is_animated, animation.n_frames) == (True, 4)
    assert (thumb.status_code, thumb.headers["content-type"]) == (200, "image/png")
    assert [path.suffix for path in downloaded] == [".webp", ".csv"]
    assert downloaded[0].read_bytes() == served.content
