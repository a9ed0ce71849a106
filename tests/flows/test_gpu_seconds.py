"""GPU-seconds of a real batch: each image's ComfyUI execution time in the manifest, summed in the report."""

import uuid

import pytest
from pydantic import JsonValue

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import graphs

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


async def test_batch_records_gpu_seconds_per_image_and_sums_them(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Three images that each sleep 0.5 s inside ComfyUI have at least that execution time in the manifest; the
    report's total is their sum."""
    nonces: list[JsonValue] = [uuid.uuid4().hex for _ in range(3)]  # fresh inputs: no cache hits on a reused server
    spec = BatchSpec(name="gpu-time", workflow=graphs.delay(0.5, graphs.unique("gpu-time")),
                     bindings={"nonce": "2.inputs.nonce"}, sweep=Sweep(axes={"nonce": nonces}),
                     servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "gpu-time")
    assert manifest is not None
    assert report.done == 3
    assert (manifest["gpu_seconds"] >= 0.5).all()
    assert report.gpu_seconds == pytest.approx(manifest["gpu_seconds"].sum(), abs=0.002)
