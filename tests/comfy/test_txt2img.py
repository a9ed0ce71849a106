"""The real model path: the tiny random-weight SD1.5 checkpoint through KSampler and VAE decode."""

from pathlib import Path

import pytest
from PIL import Image

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.workflow import ApiWorkflow
from tests.conftest import FleetServer, SuiteFleet
from tests.support import graphs

pytestmark = pytest.mark.anyio


async def _render(url: str, template: ApiWorkflow, dest: Path, **values: object) -> bytes:
    workflow = template.bind({"prompt": "a red fox in snow, \"quoted\"\nsecond line", "negative_prompt": "blurry",
                              "steps": 1, "filename_prefix": graphs.unique("txt2img"), **values})  # fmt: skip
    async with ComfyClient(url) as comfy:
        result = await comfy.run(workflow)
        saved = await comfy.download(result.outputs[0], dest)
    with Image.open(saved.path) as image:
        assert image.size == (values.get("width", 64), values.get("height", 64))
        return image.convert("RGB").tobytes()


async def test_txt2img_same_seed_gives_same_pixels_on_two_servers(comfy_fleet: SuiteFleet, tmp_path: Path) -> None:
    """Seed 7 rendered by two separate server processes decodes to identical pixels."""
    template = load_workflow(graphs.TINY_TXT2IMG)
    first, second = comfy_fleet.servers[:2]

    a = await _render(first.url, template, tmp_path / "a.png", seed=7)
    b = await _render(second.url, template, tmp_path / "b.png", seed=7)

    assert a == b


async def test_txt2img_other_seed_gives_other_pixels(comfy_server: FleetServer, tmp_path: Path) -> None:
    """Seeds 7 and 8 give different images."""
    template = load_workflow(graphs.TINY_TXT2IMG)

    a = await _render(comfy_server.url, template, tmp_path / "a.png", seed=7)
    b = await _render(comfy_server.url, template, tmp_path / "b.png", seed=8)

    assert a != b


async def test_txt2img_binds_size(comfy_server: FleetServer, tmp_path: Path) -> None:
    """Bound width and height reach EmptyLatentImage: a 64x48 request gives a 64x48 PNG."""
    template = load_workflow(graphs.TINY_TXT2IMG)

    pixels = await _render(comfy_server.url, template, tmp_path / "a.png", seed=3, width=64, height=48)

    assert len(pixels) == 64 * 48 * 3
