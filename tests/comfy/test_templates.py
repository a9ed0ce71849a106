"""The shipped templates: detected parameters, preflight on a real server, and tiny renders at the bound size."""

import json
from pathlib import Path

import pytest
from PIL import Image

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.parameters import InputPath
from comfybatch.comfy.preflight import check_workflow, split_problems
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.expansion import expand_batch
from comfybatch.local.checkpoint import TINY_CHECKPOINT
from comfybatch.models import TEMPLATES_DIR, BatchSpec, read_template
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio

# These take input images: tests/comfy/test_image_in.py, tests/flows/test_image_*.py, tests/sdk/test_product_photos.py
IMAGE_IN = {"img2img-tiny", "upscale", "inpaint-tiny", "restage-tiny", "restage-sd15"}
TEMPLATES = sorted(path.stem for path in TEMPLATES_DIR.glob("*.json") if path.stem not in IMAGE_IN)
USE_CASES = ["picture-book-tiny", "picture-book-sd15", "product-on-white-tiny", "product-on-white-sdxl",
             "social-post-tiny", "social-post-sdxl"]  # fmt: skip
TINY = [name for name in TEMPLATES if name.endswith("-tiny")]
PRODUCTION = [name for name in TEMPLATES if not name.endswith("-tiny")]
STYLED_TINY = ["picture-book-tiny", "product-on-white-tiny"]
SOCIAL_POST_SIZE = {"post_width": "7.inputs.width", "post_height": "7.inputs.height"}  # README: social-post-*
DETECTED = {"prompt", "negative_prompt", "seed", "steps", "cfg", "width", "height", "checkpoint", "filename_prefix"}


def _template(name: str) -> ApiWorkflow:
    return load_workflow(read_template(name))


async def _object_info(url: str) -> ObjectInfo:
    async with ComfyClient(url) as comfy:
        return await comfy.get_object_info()


async def _render(url: str, workflow: ApiWorkflow, dest: Path) -> tuple[int, int]:
    async with ComfyClient(url) as comfy:
        result = await comfy.run(workflow)
        saved = await comfy.download(result.outputs[0], dest)
    with Image.open(saved.path) as image:
        return image.size


def test_templates_include_the_three_use_cases_in_two_variants() -> None:
    """Picture book, product on white and social post each ship as a tiny and a production template."""
    assert set(TEMPLATES) >= set(USE_CASES)


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_offers_the_common_parameters(name: str) -> None:
    """Prompt, negative prompt, seed, steps, cfg, size, checkpoint and filename prefix are all detected."""
    offered = _template(name).parameters()

    assert set(offered) >= DETECTED


@pytest.mark.parametrize("name", USE_CASES)
def test_template_titles_every_node(name: str) -> None:
    """Every node carries a `_meta.title`, so the graph reads well when opened in ComfyUI."""
    nodes = json.loads((TEMPLATES_DIR / f"{name}.json").read_text(encoding="utf-8"))

    assert all(node.get("_meta", {}).get("title") for node in nodes.values())


@pytest.mark.parametrize("name", STYLED_TINY)
def test_styled_template_prompt_is_the_subject_not_the_style(name: str) -> None:
    """`prompt` binds the subject encoder (node 2); the style encoder (node 3) stays in the template."""
    offered = _template(name).parameters()

    assert offered["prompt"] == [InputPath("2", "text")]
    assert InputPath("3", "text") not in {path for paths in offered.values() for path in paths}


@pytest.mark.parametrize("name", TINY)
def test_tiny_template_defaults_to_64_px_and_2_steps(name: str) -> None:
    """Tiny templates use the demo checkpoint at 64x64 with 2 steps, which runs on CPU."""
    template = _template(name)
    offered = template.parameters()

    values = {key: template.get_input(offered[key][0].node_id, offered[key][0].input_name)
              for key in ("checkpoint", "width", "height", "steps")}  # fmt: skip

    assert values == {"checkpoint": TINY_CHECKPOINT, "width": 64, "height": 64, "steps": 2}


def test_social_post_zipped_sweep_binds_the_exact_post_sizes() -> None:
    """The README's zipped sweep gives one job per social size, rendered at a multiple of 8, saved at exact pixels."""
    spec = BatchSpec.model_validate({
        "name": "social", "workflow": "social-post-sdxl", "bindings": SOCIAL_POST_SIZE, "prompts": ["a lighthouse"],
        "sweep": {"zipped": [{"width": [1024, 768, 1216], "height": [1024, 1344, 640],
                              "post_width": [1080, 1080, 1200], "post_height": [1080, 1920, 630]}]},
    })  # fmt: skip

    jobs = expand_batch(spec, _template("social-post-sdxl")).jobs

    sizes = [(job.workflow.get_input("7", "width"), job.workflow.get_input("7", "height")) for job in jobs]
    assert sizes == [(1080, 1080), (1080, 1920), (1200, 630)]


@pytest.mark.parametrize("name", TINY)
async def test_tiny_template_passes_preflight(comfy_server: FleetServer, name: str) -> None:
    """A tiny template has no problem at all on a test server, which has the demo checkpoint."""
    info = await _object_info(comfy_server.url)

    problems = check_workflow(_template(name), info)

    assert problems == []


@pytest.mark.parametrize("name", PRODUCTION)
async def test_production_template_lacks_only_its_checkpoint(comfy_server: FleetServer, name: str) -> None:
    """On a server without the production checkpoint, the one problem is `ckpt_name` not in its list."""
    info = await _object_info(comfy_server.url)
    template = _template(name)
    installed = template.get_input("1", "ckpt_name") in (
        info.combo_options("CheckpointLoaderSimple", "ckpt_name") or []
    )

    split = split_problems(check_workflow(template, info))

    assert split.workflow_wrong == ()
    expected = [] if installed else [("1", "ckpt_name", "value_not_in_list")]
    assert [(p.node_id, p.input_name, p.kind) for p in split.server_lacks] == expected


@pytest.mark.parametrize("name", PRODUCTION)
async def test_production_template_with_tiny_checkpoint_passes_preflight(comfy_server: FleetServer, name: str) -> None:
    """Swapping in the demo checkpoint leaves no problem: the rest of the production graph is valid."""
    info = await _object_info(comfy_server.url)

    problems = check_workflow(_template(name).bind({"checkpoint": TINY_CHECKPOINT}), info)

    assert problems == []


@pytest.mark.parametrize("name", STYLED_TINY)
async def test_styled_tiny_template_renders_at_its_size(comfy_server: FleetServer, name: str, tmp_path: Path) -> None:
    """Prompt plus the template's style, one step, renders a 64x64 image on a real server."""
    workflow = _template(name).bind({"prompt": "a red kite", "steps": 1, "filename_prefix": graphs.unique(name)})

    size = await _render(comfy_server.url, workflow, tmp_path / "out.png")

    assert size == (64, 64)


async def test_social_post_tiny_saves_the_exact_post_size(comfy_server: FleetServer, tmp_path: Path) -> None:
    """Rendered at 120x64 (multiples of 8) and scaled to post size 120x63, the saved image is exactly 120x63."""
    values = {"prompt": "a red kite", "steps": 1, "filename_prefix": graphs.unique("social-post-tiny"),
              "width": 120, "height": 64, "post_width": 120, "post_height": 63}  # fmt: skip
    workflow = _template("social-post-tiny").bind(values, SOCIAL_POST_SIZE)

    size = await _render(comfy_server.url, workflow, tmp_path / "out.png")

    assert size == (120, 63)
