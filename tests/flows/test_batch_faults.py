"""Faults during a batch: flaky, failing, rejected and cancelled jobs (process kills: `tests/reliability`)."""

import asyncio
import contextlib
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

from comfybatch.comfy.client import ComfyClient
from comfybatch.errors import BatchIncomplete
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches
from tests.support.faults import wait_for

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


async def test_flaky_job_succeeds_on_retry(batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path) -> None:
    """An out-of-memory failure on the only server is retried by Prefect and then succeeds (2 attempts)."""
    graph = batches.through_graph("ComfybatchFlaky", key=f"flaky-{tmp_path.name}", failures=1, state_dir=str(tmp_path))
    spec = BatchSpec(name="flaky", workflow=graph, bindings={"nonce": "2.inputs.nonce"},
                     sweep=Sweep(axes={"nonce": batches.nonces("flaky", 1)}),
                     servers=server_names(comfy_fleet)[:1])  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "flaky")
    assert manifest is not None
    assert report.done == 1
    assert list(manifest["attempts"]) == [2]


def _blur_spec(name: str, radii: list[int], servers: list[str]) -> BatchSpec:
    # A 31 px blur on an 8x8 image passes validation and fails at run time (comfyui-protocol.md §7 (3)).
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 1, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    return BatchSpec(name=name, workflow=graph, bindings={"radius": "2.inputs.blur_radius", "sigma": "2.inputs.sigma"},
                     sweep=Sweep(zipped=[{"radius": radii, "sigma": [1.0 + i / 100 for i in range(len(radii))]}]),
                     servers=servers)  # fmt: skip


async def test_failing_job_fails_alone_with_its_message(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """One job that raises at run time fails with ComfyUI's message; the other jobs complete and are kept."""
    spec = _blur_spec("one-fails", [1, 2, 31, 3], server_names(comfy_fleet))

    with pytest.raises(BatchIncomplete) as caught:
        await generate_batch(spec)

    report = caught.value.report
    manifest = read_manifest(OutputStore(batch_settings.output_root), "one-fails")
    assert manifest is not None
    assert (report.done, report.failed) == (3, 1)
    (error,) = manifest.loc[manifest["status"] == "failed", "error"]
    assert "Image Blur (node 2)" in error
    assert list(manifest.loc[manifest["status"] == "failed", "attempts"]) == [0]


async def test_rerun_skips_everything_already_stored(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """Running the same batch twice: the second run renders nothing and reports every job skipped."""
    spec = batches.delay_spec("rerun", seconds=0.05, count=4, servers=server_names(comfy_fleet))
    await generate_batch(spec)
    before = {server.name: batches.executions(server.local) for server in comfy_fleet.servers if server.local}

    report = await generate_batch(spec)

    after = {server.name: batches.executions(server.local) for server in comfy_fleet.servers if server.local}
    assert (report.skipped, report.done) == (4, 0)
    assert before == after


async def test_cancelling_a_batch_clears_its_prompts_from_the_servers(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Cancelling the flow mid-batch interrupts running prompts and removes queued ones: the servers go idle."""
    spec = batches.delay_spec("cancel-me", seconds=4.0, count=8, servers=server_names(comfy_fleet))
    clients = [ComfyClient(server.url) for server in comfy_fleet.servers]
    running = asyncio.create_task(generate_batch(spec))
    try:
        await wait_for(lambda: batches.submitted_records(Path(batch_settings.output_root) / "cancel-me") >= 3)
        await asyncio.sleep(0.3)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        await asyncio.sleep(0.5)
        depths = [(await comfy.get_queue()).depth for comfy in clients]
    finally:
        for comfy in clients:
            await comfy.aclose()

    assert depths == [0] * len(clients)


async def test_rejected_job_is_not_retried(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """A job every server rejects at validation (an input image none has) fails after one attempt."""
    graph = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "nowhere-to-be-found.png"}},
        "2": {"class_type": "ComfybatchDelay", "inputs": {"image": ["1", 0], "seconds": 0.0, "nonce": ""}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    spec = BatchSpec(name="rejected", workflow=graph, bindings={"nonce": "2.inputs.nonce"},
                     sweep=Sweep(axes={"nonce": batches.nonces("rejected", 1)}),
                     servers=server_names(comfy_fleet))  # fmt: skip

    with pytest.raises(BatchIncomplete) as caught:
        await generate_batch(spec)

    async with get_client() as client:
        runs = await client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(any_=["rejected-1-item"]))
        )
    assert "nowhere-to-be-found.png" in caught.value.report.failures[0][1]
    assert [run.run_count for run in runs] == [1]
