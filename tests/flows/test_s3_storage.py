"""Batches on object storage: sheet, input images, outputs, manifest and contact sheet under `s3://`, on moto's
standalone S3 server (the way s3fs's own suite tests) and real ComfyUI."""

import asyncio
import contextlib
import io
import random
import re
from collections.abc import Iterator

import pytest
from PIL import Image

from comfybatch.errors import StorageError
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from comfybatch.testing.proxy import TcpProxy
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.flows.test_image_inputs import INVERT, _colours
from tests.support.faults import port_of
from tests.support.s3 import moto_s3, use_s3

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


class CuttingProxy(TcpProxy):
    """A `TcpProxy` that drops every connection, and refuses new ones, once `budget_bytes` went upstream."""

    def __init__(self, target_port: int, *, budget_bytes: int) -> None:
        super().__init__(target_port)
        self.budget_bytes = budget_bytes

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while self.budget_bytes > 0 and (chunk := await reader.read(1 << 16)):
                self.budget_bytes -= len(chunk)
                writer.write(chunk[: max(0, len(chunk) + self.budget_bytes)])
                await writer.drain()
        if self.budget_bytes <= 0 and self._server is not None:
            self._server.close()
        self.cut()


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_s3() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    return use_s3(monkeypatch, s3_endpoint)


def _png(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _pixel(data: bytes) -> tuple[int, int, int]:
    with Image.open(io.BytesIO(data)) as image:
        red, green, blue = image.convert("RGB").getpixel((4, 4))  # type: ignore[misc]
        return red, green, blue


async def test_sheet_inputs_and_outputs_all_on_s3(
    batch_settings: Settings, comfy_fleet: SuiteFleet, bucket: str
) -> None:
    """A sheet on S3 naming images beside it: each output, the manifest and the contact sheet land on S3, and each
    output is the inverse of its own input."""
    inputs = OutputStore(f"s3://{bucket}/in")
    colours = _colours(2)
    for number, colour in enumerate(colours):
        inputs.write_bytes(f"photos/item-{number}.png", _png(colour))
    inputs.write_bytes("photos/rows.csv", b"image\nitem-0.png\nitem-1.png\n")
    spec = BatchSpec(name="on-s3", workflow=INVERT, sheet=f"s3://{bucket}/in/photos/rows.csv",
                     output=f"s3://{bucket}/out", servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    store = OutputStore(f"s3://{bucket}/out")
    manifest = read_manifest(store, "on-s3")
    assert (report.done, report.failed) == (2, 0)
    assert report.output == f"s3://{bucket}/out/on-s3"
    assert manifest is not None
    assert store.exists("on-s3/contact_sheet.png")
    for number, (_, row) in enumerate(manifest.sort_values("index").iterrows()):
        assert row["param.image"] == f"s3://{bucket}/in/photos/item-{number}.png"
        relpath = store.relpath_of(str(row["outputs"][0]))
        assert relpath is not None
        assert relpath.startswith(f"on-s3/{number + 1:05d}_item-{number}_")
        inverse = [255 - channel for channel in colours[number]]
        assert all(abs(a - b) <= 1 for a, b in zip(_pixel(store.read_bytes(relpath)), inverse, strict=True))


async def test_image_prefix_on_s3_is_one_item_per_file_and_a_rerun_renders_nothing(
    batch_settings: Settings, comfy_fleet: SuiteFleet, bucket: str
) -> None:
    """An `s3://` prefix of images is one item per file in name order; a rerun finds every output on S3."""
    inputs = OutputStore(f"s3://{bucket}/shoot")
    for number, colour in enumerate(_colours(3)):
        inputs.write_bytes(f"photo-{number}.png", _png(colour))
    spec = BatchSpec(name="prefix", workflow=INVERT, images=f"s3://{bucket}/shoot", output=f"s3://{bucket}/out",
                     servers=server_names(comfy_fleet))  # fmt: skip

    first = await generate_batch(spec)
    second = await generate_batch(spec)

    store = OutputStore(f"s3://{bucket}/out")
    stored = [path for path in store.list("prefix") if re.fullmatch(r"prefix/\d{5}_.+\.png", path)]
    assert (first.done, second.done, second.skipped) == (3, 0, 3)
    assert [path.rsplit("_", 1)[0] for path in stored] == [f"prefix/{n + 1:05d}_photo-{n}" for n in range(3)]


async def test_an_upload_cut_halfway_leaves_no_object(s3_endpoint: str, bucket: str) -> None:
    """A write whose connection drops halfway through the body fails, and S3 holds no object, whole or partial."""
    data = random.randbytes(4 << 20)
    no_retries = {"config_kwargs": {"retries": {"max_attempts": 1}}}
    async with CuttingProxy(port_of(s3_endpoint), budget_bytes=1 << 20) as proxy:
        store = OutputStore(f"s3://{bucket}/out", storage_options={"endpoint_url": proxy.url, **no_retries})
        with pytest.raises(StorageError):
            await asyncio.to_thread(store.write_bytes, "cut/big.bin", data)

    assert OutputStore(f"s3://{bucket}/out").list() == []
