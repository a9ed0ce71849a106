"""`PUT /api/uploads/<name>.zip`: a zip of input images becomes one stored upload per image, checked before any is
kept; the SDK sends a local zip in one request. In process, Prefect left out (uploads never reach it)."""

import io
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from prefect.client.schemas.objects import FlowRun

from comfybatch.client import AsyncComfyBatchClient
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.inputs import UPLOADS_FOLDER
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH

pytestmark = pytest.mark.anyio
ZIP = {**AUTH, "Content-Type": "application/zip"}


class RecordingLauncher(Launcher):
    """The launcher with Prefect left out: a batch request that gets this far is recorded, not run."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, api_url="http://127.0.0.1:9/api")  # anything that reaches Prefect fails
        self.started: list[BatchSpec] = []

    async def start(self, spec: BatchSpec, idempotency_key: str | None, submitted_by: str) -> FlowRun:
        self.started.append(spec)
        return FlowRun(flow_id=uuid.uuid4(), name=spec.name)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(output_root=str(tmp_path / "out"), api_keys={"ci": API_KEY})


@pytest.fixture
def launcher(settings: Settings) -> RecordingLauncher:
    return RecordingLauncher(settings)


@pytest.fixture
async def http(settings: Settings, launcher: RecordingLauncher) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=create_app(settings, launcher))
    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as client:
        yield client


def _png(colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _read(path: str) -> bytes:
    return Path(path).read_bytes()


def _uploads(settings: Settings) -> list[Path]:
    return sorted(Path(settings.output_root, UPLOADS_FOLDER).glob("*"))


async def test_zip_images_are_stored_one_by_one_in_name_order(http: httpx.AsyncClient, settings: Settings) -> None:
    """Images in any folder of the zip are stored content-addressed, in member-name order; hidden files, macOS
    resource forks and other files are skipped."""
    members = {"b.png": _png((1, 2, 3)), "a/c.jpg": _png((4, 5, 6), "JPEG"), "z.webp": _png((7, 8, 9), "WEBP"),
               "__MACOSX/._b.png": b"resource fork", ".hidden.png": b"x", "notes.txt": b"shoot 12"}  # fmt: skip

    response = await http.put("/api/uploads/shoot.zip", content=_zip(members), headers=ZIP)

    assert response.status_code == 201, response.text
    images = response.json()["images"]
    assert [Path(uri).name.split("-", 1)[1] for uri in images] == ["c.jpg", "b.png", "z.webp"]
    assert [_read(uri) for uri in images] == [members["a/c.jpg"], members["b.png"], members["z.webp"]]
    assert len(_uploads(settings)) == 3


async def test_a_zip_with_a_broken_image_stores_nothing_and_names_it(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    """One member that is not an image refuses the whole upload with 400 naming that member; nothing is kept."""
    members = {"good.png": _png((10, 20, 30)), "pages/bad.png": b"not a picture"}

    response = await http.put("/api/uploads/pages.zip", content=_zip(members), headers=ZIP)

    assert response.status_code == 400, response.text
    assert "pages/bad.png: not an image" in response.text
    assert "good.png" not in response.text
    assert _uploads(settings) == []


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"PK\x03\x04 but not really a zip", "not a zip archive"),
     (_zip({"readme.txt": b"no pictures"}), "holds no image files"),
     (_zip({"bomb.png": bytes(5_000_000)}), "zip bomb")],
)  # fmt: skip
async def test_unusable_zips_are_refused_naming_why(
    http: httpx.AsyncClient, settings: Settings, body: bytes, words: str
) -> None:
    """Not a zip, a zip of no images, and one that inflates far beyond its size: 400 saying so, nothing kept."""
    response = await http.put("/api/uploads/x.zip", content=body, headers=ZIP)

    assert response.status_code == 400, response.text
    assert words in response.text
    assert _uploads(settings) == []


async def test_sdk_submits_a_local_zip_as_its_images(launcher: RecordingLauncher, tmp_path: Path) -> None:
    """`submit_batch(images=["shoot.zip"])` uploads the zip once and asks for one item per image in it."""
    (tmp_path / "shoot.zip").write_bytes(_zip({"2.png": _png((0, 0, 9)), "1.png": _png((0, 0, 8))}))
    transport = httpx.ASGITransport(app=create_app(launcher.settings, launcher))

    async with AsyncComfyBatchClient("http://dashboard", API_KEY, transport=transport) as sdk:
        await sdk.submit_batch(images=[tmp_path / "shoot.zip"], workflow="upscale", batch_name="zipped")

    [spec] = launcher.started
    assert isinstance(spec.images, list)
    assert [Path(image).name.split("-", 1)[1] for image in spec.images] == ["1.png", "2.png"]
