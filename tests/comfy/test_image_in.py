"""Input images on a real ComfyUI: content-addressed uploads, and the image-in templates."""

import asyncio
import functools
import http.server
import random
import shutil
import threading
from pathlib import Path
from typing import ClassVar

import httpx
import pytest
from PIL import Image

from comfybatch.comfy.client import ComfyClient
from comfybatch.errors import BatchRequestError
from comfybatch.expansion import expand_batch
from comfybatch.flows.plan import resolve_workflow
from comfybatch.inputs import SUBFOLDER, InputPolicy, check_image, ensure_uploaded
from comfybatch.local.fleet import LocalComfyServer, free_port
from comfybatch.models import BatchSpec
from comfybatch.pipeline import prepare_workflow
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio
POLICY = InputPolicy()


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting `POST /upload/image` requests."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.uploads = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path == "/upload/image":
            self.uploads += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _swatch(folder: Path, name: str, size: tuple[int, int] = (8, 6)) -> Path:
    """A PNG of a colour no earlier run used: the server cannot hold it yet."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    colour = tuple(random.randrange(256) for _ in range(3))
    Image.new("RGB", size, colour).save(path)
    return path


async def test_concurrent_jobs_upload_an_input_once_and_a_rerun_uploads_nothing(
    comfy_server: FleetServer, tmp_path: Path
) -> None:
    """Three jobs needing the same new input at once upload it once; asking again uploads nothing."""
    image = check_image(str(_swatch(tmp_path, "shoe.png")), POLICY)
    transport = CountingTransport()
    async with ComfyClient(comfy_server.url, transport=transport) as comfy:
        uploaded = await asyncio.gather(
            *(ensure_uploaded(comfy, image.location, image.sha256, POLICY) for _ in range(3))
        )
        again = await ensure_uploaded(comfy, image.location, image.sha256, POLICY)
        held = await comfy.has_input(image.server_name.split("/")[1], subfolder=SUBFOLDER)

    assert sorted(uploaded) == [False, False, True]
    assert (again, held, transport.uploads) == (False, True, 1)


async def test_input_lost_by_a_restarted_server_is_uploaded_again(victim: LocalComfyServer, tmp_path: Path) -> None:
    """After a restart with a wiped input folder, the next job uploads the input again."""
    image = check_image(str(_swatch(tmp_path, "mug.png")), POLICY)
    async with ComfyClient(victim.url) as comfy:
        first = await ensure_uploaded(comfy, image.location, image.sha256, POLICY)
    await asyncio.to_thread(victim.stop)
    shutil.rmtree(victim.input_dir / SUBFOLDER)
    await asyncio.to_thread(victim.restart)
    async with ComfyClient(victim.url) as comfy:
        second = await ensure_uploaded(comfy, image.location, image.sha256, POLICY)
        third = await ensure_uploaded(comfy, image.location, image.sha256, POLICY)

    assert (first, second, third) == (True, True, False)


async def test_upscale_template_doubles_each_input(comfy_server: FleetServer, tmp_path: Path) -> None:
    """The weight-free upscale template, expanded from an images list, saves each input at twice its size."""
    paths = [_swatch(tmp_path / "in", "a.png", (8, 6)), _swatch(tmp_path / "in", "b.png", (5, 7))]
    spec = BatchSpec(name="up", workflow="upscale", images=[str(path) for path in paths])
    jobs = expand_batch(spec, resolve_workflow("upscale", {}), input_policy=POLICY).jobs

    sizes = []
    async with ComfyClient(comfy_server.url) as comfy:
        for job in jobs:
            await ensure_uploaded(comfy, str(job.values["image"]), str(job.values["image_sha256"]), POLICY)
            workflow = prepare_workflow(job).bind({"filename_prefix": graphs.unique("upscale")})
            result = await comfy.run(workflow)
            saved = await comfy.download(result.outputs[0], tmp_path / "out" / f"{job.file_stem}.png")
            with Image.open(saved.path) as output:
                sizes.append(output.size)

    assert [job.label for job in jobs] == ["a", "b"]
    assert sizes == [(16, 12), (10, 14)]


def test_image_parameter_is_detected_on_the_first_load_image() -> None:
    """`image` binds the first LoadImage's file, as `prompt` binds the text encoder."""
    offered = resolve_workflow("img2img-tiny", {}).parameters()

    assert [str(path) for path in offered["image"]] == ["4.inputs.image"]
    assert "mask" not in offered


def test_image_cell_relative_to_the_sheet_binds_a_content_addressed_name(tmp_path: Path) -> None:
    """A sheet's relative `image` cell is read beside the sheet; the graph gets `comfybatch/<sha16>.png`."""
    path = _swatch(tmp_path / "sheet", "cup.png")
    (tmp_path / "sheet" / "rows.csv").write_text("image,prompt\ncup.png,a cup\n", encoding="utf-8")
    spec = BatchSpec(name="s", workflow="img2img-tiny", sheet=str(tmp_path / "sheet" / "rows.csv"))

    job = expand_batch(spec, resolve_workflow("img2img-tiny", {}), input_policy=POLICY).jobs[0]

    digest = check_image(str(path), POLICY).sha256
    assert job.values["image"] == str(path)
    assert job.values["image_sha256"] == digest
    assert job.workflow.get_input("4", "image") == f"comfybatch/{digest[:16]}.png"
    assert job.file_stem.startswith("00001_cup_")


def test_url_that_does_not_answer_is_named(tmp_path: Path) -> None:
    """An image URL on a closed port (internal hosts allowed by the setting) is refused as not answering."""
    policy = InputPolicy(allow_private_urls=True, allow_http_urls=True, fetch_timeout_s=2.0)
    spec = BatchSpec(name="u", workflow="upscale", images=[f"http://127.0.0.1:{free_port()}/cat.png"])

    with pytest.raises(BatchRequestError, match=r"image 1: .*cat.png: does not answer"):
        expand_batch(spec, resolve_workflow("upscale", {}), input_policy=policy)


def test_bound_upload_input_and_mask_are_input_images(tmp_path: Path) -> None:
    """A name bound to a LoadImage's file is checked and content-addressed like `image`; `mask` is detected."""
    photo = _swatch(tmp_path, "photo.png")
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
        "3": {"class_type": "LoadImageMask", "inputs": {"image": "example.png", "channel": "alpha"}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    spec = BatchSpec(name="b", workflow=graph, bindings={"photo": "2.inputs.image"},
                     defaults={"photo": str(photo), "mask": str(photo)})  # fmt: skip

    job = expand_batch(spec, resolve_workflow(graph, {}), input_policy=POLICY).jobs[0]

    name = check_image(str(photo), POLICY).server_name
    assert (job.workflow.get_input("2", "image"), job.workflow.get_input("3", "image")) == (name, name)
    assert job.workflow.get_input("1", "image") == "example.png"  # `image` is offered, and unset here
    assert {"photo_sha256", "mask_sha256"} <= set(job.values)


def test_local_root_refuses_files_outside_it(tmp_path: Path) -> None:
    """With `local_roots` set (requests over the API), a sheet cell naming a file elsewhere is refused by row."""
    _swatch(tmp_path / "secret", "private.png")
    (tmp_path / "uploads").mkdir()
    (tmp_path / "uploads" / "rows.csv").write_text("image\n../secret/private.png\n", encoding="utf-8")
    spec = BatchSpec(name="r", workflow="upscale", sheet=str(tmp_path / "uploads" / "rows.csv"))
    policy = InputPolicy(local_roots=(str(tmp_path / "uploads"),))

    with pytest.raises(BatchRequestError, match=r"row 2, column 'image'.*only https URLs and uploaded files"):
        expand_batch(spec, resolve_workflow("upscale", {}), input_policy=policy)


class _RecordingHandler(http.server.SimpleHTTPRequestHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.hosts.append(self.headers["Host"])
        super().do_GET()

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        return


def test_image_url_is_fetched_from_the_checked_address_with_its_host(tmp_path: Path) -> None:
    """An image URL (internal hosts allowed by the setting) becomes an item; it is fetched once, Host kept."""
    _swatch(tmp_path, "remote.png")
    handler = functools.partial(_RecordingHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://localhost:{server.server_port}/remote.png"
    policy = InputPolicy(allow_private_urls=True, allow_http_urls=True, fetch_timeout_s=5.0)
    try:
        spec = BatchSpec(name="u", workflow="upscale", images=[url])
        job = expand_batch(spec, resolve_workflow("upscale", {}), input_policy=policy).jobs[0]
    finally:
        server.shutdown()
        server.server_close()

    assert (job.values["image"], job.label) == (url, "remote")
    assert _RecordingHandler.hosts == [f"localhost:{server.server_port}"]
