"""Image-in batches on real ComfyUI: each item brings its own input, uploaded once per server by its content."""

import asyncio
import contextlib
import random
from pathlib import Path

import pytest
from PIL import Image

from comfybatch.blocks.server import name_from_url
from comfybatch.comfy.session import close_sessions
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings, get_settings
from comfybatch.testing.proxy import TcpProxy
from tests.conftest import FleetServer, SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names, use_test_settings
from tests.support.faults import port_of

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]

INVERT = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "example.png"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
}
INVERT_DELAY = {  # a nonce per job: several jobs share one input
    **INVERT,
    "3": {"class_type": "ComfybatchDelay", "inputs": {"image": ["2", 0], "seconds": 0.0, "nonce": ""}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "x"}},
}


class UploadCountingProxy(TcpProxy):
    """A `TcpProxy` that counts the `POST /upload/image` requests passing through it."""

    uploads = 0

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while chunk := await reader.read(1 << 16):
                self.uploads += chunk.count(b"POST /upload/image ")
                writer.write(chunk)
                await writer.drain()
        writer.transport.abort()
        self._writers.discard(writer)


def _colours(count: int) -> list[tuple[int, int, int]]:
    """Distinct colours never used before: a server cannot already hold these inputs."""
    rng = random.Random()
    chosen: set[tuple[int, int, int]] = set()
    while len(chosen) < count:
        chosen.add((rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    return sorted(chosen)


def _write_inputs(folder: Path, colours: list[tuple[int, int, int]]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, colour in enumerate(colours):
        path = folder / f"swatch-{number}.png"
        Image.new("RGB", (8, 8), colour).save(path)
        paths.append(path)
    return paths


def _outputs(settings: Settings, batch: str) -> list[Path]:
    return sorted(Path(settings.output_root, batch).glob("[0-9]*.png"))


def _pixel(path: str) -> tuple[int, int, int]:
    with Image.open(path) as image:
        red, green, blue = image.convert("RGB").getpixel((4, 4))  # type: ignore[misc]
        return red, green, blue


async def test_image_folder_each_output_is_its_own_inputs_inverse(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """A folder of three colours through LoadImage -> ImageInvert: each output pixel is the inverse of its input's."""
    colours = _colours(3)
    _write_inputs(tmp_path / "photos", colours)
    spec = BatchSpec(name="invert", workflow=INVERT, images=str(tmp_path / "photos"), servers=server_names(comfy_fleet))

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "invert")
    assert manifest is not None
    assert (report.done, report.failed) == (3, 0)
    for number, (_, row) in enumerate(manifest.sort_values("index").iterrows()):
        assert row["param.image"] == str(tmp_path / "photos" / f"swatch-{number}.png")
        assert len(row["param.image_sha256"]) == 64
        output = _outputs(batch_settings, "invert")[number]
        assert output.name == f"{number + 1:05d}_swatch-{number}_noseed.png"
        inverse = [255 - channel for channel in colours[number]]
        assert all(abs(a - b) <= 1 for a, b in zip(_pixel(str(output)), inverse, strict=True))  # float rounding


async def test_img2img_tiny_template_renders_each_input(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """The img2img-tiny template runs end to end on two input images, one output per input named by its stem."""
    _write_inputs(tmp_path / "photos", _colours(2))
    spec = BatchSpec(name="img2img", workflow="img2img-tiny", images=str(tmp_path / "photos"),
                     prompts=["the same picture, watercolor"], servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    names = [path.name for path in _outputs(batch_settings, "img2img")]
    assert (report.done, report.failed) == (2, 0)
    assert [name.rsplit("_", 1)[0] for name in names] == ["00001_swatch-0", "00002_swatch-1"]


async def test_each_input_is_uploaded_once_per_server_and_never_again(
    prefect_api: str, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two inputs x four nonces on two servers, twice: each input is uploaded at most once per server in all."""
    inputs = _write_inputs(tmp_path / "photos", _colours(2))
    backends = comfy_fleet.servers[:2]
    async with (
        UploadCountingProxy(port_of(backends[0].url)) as first,
        UploadCountingProxy(port_of(backends[1].url)) as second,
    ):
        proxies = [first, second]
        use_test_settings(monkeypatch, SuiteFleet([FleetServer(p.url, p.url) for p in proxies], None), tmp_path)
        names = [name_from_url(proxy.url) for proxy in proxies]
        try:
            specs = [
                BatchSpec(name=f"uploads-{run}", workflow=INVERT_DELAY, images=[str(path) for path in inputs],
                          bindings={"nonce": "3.inputs.nonce"}, servers=names,
                          sweep=Sweep(axes={"nonce": [f"{run}-{tmp_path.name}-{n}" for n in range(4)]}))
                for run in ("first", "second")
            ]  # fmt: skip
            first_report = await generate_batch(specs[0])
            uploads_first = [proxy.uploads for proxy in proxies]
            second_report = await generate_batch(specs[1])
            uploads_second = [proxy.uploads - before for proxy, before in zip(proxies, uploads_first, strict=True)]
        finally:
            await close_sessions()
            get_settings.cache_clear()

    totals = [a + b for a, b in zip(uploads_first, uploads_second, strict=True)]
    assert (first_report.done, second_report.done) == (8, 8)
    assert all(count <= 2 for count in totals), (uploads_first, uploads_second)  # each input once per server, ever
    assert sum(uploads_first) >= 2  # each input reached some server
