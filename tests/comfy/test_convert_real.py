"""UI-format workflows converted with a live server's /object_info are accepted and executed."""

import io
from pathlib import Path

import pytest
from PIL import Image

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from tests.conftest import FIXTURES, FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio

# fixture -> {output node id: (files, (width, height))}; temp previews count as files too.
EXPECTED = {
    "primitives": {"5": (2, (96, 64))},
    "reroute_notes": {"5": (1, (64, 48)), "8": (1, (64, 48))},
    "seed_control": {"4": (3, (32, 32))},
    "load_image": {"3": (1, (80, 60)), "6": (1, (40, 30))},
    "muted_bypassed": {"4": (1, (64, 64)), "8": (1, (64, 64))},
    "subgraph": {"11": (1, (48, 32)), "10:3": (1, (48, 32)), "13": (1, (48, 32))},
    "object_links": {"4": (1, (24, 40))},
}


async def _upload_red(comfy: ComfyClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (255, 0, 0)).save(buffer, format="PNG")
    await comfy.upload_image(buffer.getvalue(), filename="comfybatch-red.png", overwrite=True)


@pytest.mark.parametrize("name", sorted(EXPECTED))
async def test_converted_ui_workflow_runs_on_real_comfyui(name: str, comfy_server: FleetServer, tmp_path: Path) -> None:
    """Each hand-made UI graph converts, runs, and yields the expected images per output node."""
    async with ComfyClient(comfy_server.url) as comfy:
        if name == "load_image":
            await _upload_red(comfy)
        workflow = load_workflow(FIXTURES / "ui" / f"{name}.json", await comfy.get_object_info())
        for node_id in workflow.node_ids:
            if workflow.class_type(node_id) == "SaveImage":
                workflow = workflow.with_input(node_id, "filename_prefix", graphs.unique(name))
        result = await comfy.run(workflow)
        sizes: dict[str, list[tuple[int, int]]] = {}
        for index, output in enumerate(result.outputs):
            saved = await comfy.download(output, tmp_path / f"{index}.png")
            sizes.setdefault(output.node_id, []).append(graphs.size(saved.path))

    assert sizes == {node: [size] * count for node, (count, size) in EXPECTED[name].items()}


async def test_bypassed_node_is_rewired_not_run(comfy_server: FleetServer, tmp_path: Path) -> None:
    """The bypassed ImageInvert is skipped: the saved image stays white."""
    async with ComfyClient(comfy_server.url) as comfy:
        workflow = load_workflow(FIXTURES / "ui" / "muted_bypassed.json", await comfy.get_object_info())
        workflow = workflow.with_input("4", "filename_prefix", graphs.unique("bypass"))
        result = await comfy.run(workflow)
        (saved_output,) = [output for output in result.outputs if output.node_id == "4"]
        saved = await comfy.download(saved_output, tmp_path / "white.png")

    assert graphs.close_to(graphs.pixel(saved.path), (255, 255, 255))
