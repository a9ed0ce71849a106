"""The inpaint and animated templates as batches on real ComfyUI and the tiny checkpoint."""

from pathlib import Path

import pytest
from PIL import Image

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.flows.test_image_inputs import _colours

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]
SIZE = 64  # the tiny checkpoint's VAE works on multiples of 8


def _inputs(folder: Path, colours: list[tuple[int, int, int]]) -> None:
    """One solid photo per colour, and one mask: white (repaint) on the left half, black (keep) on the right."""
    folder.mkdir(parents=True)
    rows = ["image,mask,prompt"]
    for number, colour in enumerate(colours):
        Image.new("RGB", (SIZE, SIZE), colour).save(folder / f"photo-{number}.png")
        rows.append(f"photo-{number}.png,left-half.png,a clean white marble surface")
    mask = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    mask.paste((255, 255, 255), (0, 0, SIZE // 2, SIZE))
    mask.save(folder / "left-half.png")
    (folder / "rows.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


async def test_inpaint_tiny_repaints_only_the_masked_half(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """A sheet of photos with a mask: each output keeps its own photo's pixels exactly where the mask is black and
    is repainted where it is white."""
    colours = _colours(2)
    _inputs(tmp_path / "pages", colours)
    spec = BatchSpec(name="inpaint", workflow="inpaint-tiny", sheet=str(tmp_path / "pages" / "rows.csv"),
                     servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "inpaint")
    assert (report.done, report.failed) == (2, 0)
    assert manifest is not None
    for number, (_, row) in enumerate(manifest.sort_values("index").iterrows()):
        assert row["param.mask"] == str(tmp_path / "pages" / "left-half.png")
        with Image.open(row["outputs"][0]) as output:
            pixels = output.convert("RGB")
            kept = {pixels.getpixel((x, y)) for x in range(SIZE // 2, SIZE) for y in range(SIZE)}
            repainted = {pixels.getpixel((x, y)) for x in range(SIZE // 2) for y in range(SIZE)}
        assert output.size == (SIZE, SIZE)
        assert kept == {colours[number]}
        assert repainted != {colours[number]}


async def test_animated_tiny_stores_an_animated_webp_listed_with_its_media_type(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """The animated-tiny template's output is stored as an animated WebP of four frames, listed in the manifest as
    image/webp."""
    spec = BatchSpec(name="animated", workflow="animated-tiny", prompts=["a paper boat drifting on a pond"],
                     servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "animated")
    assert (report.done, report.failed) == (1, 0)
    assert manifest is not None
    [row] = manifest.to_dict("records")
    assert row["media_types"] == ["image/webp"]
    path = Path(row["outputs"][0])
    assert path.suffix == ".webp"
    with Image.open(path) as output:
        assert (output.format, output.is_animated, output.n_frames) == ("WEBP", True, 4)
