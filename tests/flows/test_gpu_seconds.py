"""GPU-seconds of a real batch: each image's ComfyUI execution time in the manifest, summed in the report."""

import pytest

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


async def test_batch_records_gpu_seconds_per_image_and_sums_them(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Every rendered image has ComfyUI's own execution time in the manifest; the report's total is their sum."""
    spec = BatchSpec(name="gpu-time", workflow="txt2img-tiny", prompts=["a red kite", "a blue kite", "a kite"],
                     defaults={"steps": 1}, servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "gpu-time")
    assert manifest is not None
    assert report.done == 3
    assert (manifest["gpu_seconds"] > 0).all()
    assert report.gpu_seconds == pytest.approx(manifest["gpu_seconds"].sum(), abs=0.002)
