"""Uploads and downloads against a real ComfyUI."""

import io

import pytest
from PIL import Image

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio


def _png(color: tuple[int, int, int], size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


async def test_uploaded_image_feeds_load_image(comfy_server: FleetServer, tmp_path) -> None:
    """An uploaded red PNG, loaded by its returned ref and inverted, comes back cyan."""
    async with ComfyClient(comfy_server.url) as comfy:
        uploaded = await comfy.upload_image(_png((255, 0, 0)), filename="red.png", subfolder="tests")
        workflow = load_workflow({
            "1": {"class_type": "LoadImage", "inputs": {"image": uploaded.ref}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": graphs.unique("up")}},
        })  # fmt: skip
        result = await comfy.run(workflow)
        saved = await comfy.download(result.outputs[0], tmp_path / "out.png")

    assert graphs.close_to(graphs.pixel(saved.path), (0, 255, 255))


async def test_upload_clash_with_other_bytes_gets_a_new_name(comfy_server: FleetServer) -> None:
    """Different bytes under an existing name are renamed by the server; we use the returned name."""
    async with ComfyClient(comfy_server.url) as comfy:
        name = graphs.unique("clash").split("/")[-1] + ".png"
        first = await comfy.upload_image(_png((1, 2, 3)), filename=name)
        second = await comfy.upload_image(_png((4, 5, 6)), filename=name)

    assert first.name == name
    assert second.name != name
