"""Batch identity (issue 10 §1) and the record written at every ending (§6), on real ComfyUI and Prefect."""

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType

from comfybatch.errors import BatchConflict, BatchIncomplete
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches, faults

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


def _spec(name: str, fleet: SuiteFleet, *, seconds: float, nonces: list[str], **fields: Any) -> BatchSpec:
    """Delay-node jobs with fixed nonces; `seconds` is a bound parameter, so it changes the request."""
    return BatchSpec(
        name=name, workflow=batches.through_graph("ComfybatchDelay", seconds=0.0),
        bindings={"nonce": "2.inputs.nonce", "seconds": "2.inputs.seconds"}, defaults={"seconds": seconds},
        sweep=Sweep(axes={"nonce": list(nonces)}), servers=server_names(fleet), **fields,
    )  # fmt: skip


def _digests(folder: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.glob("0*.png"))}


def _journal(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted((folder / ".jobs").glob("*.json"))]


async def test_same_name_with_another_request_is_refused_and_the_first_batch_is_untouched(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Run 1 renders; run 2 (same name, same items, `seconds` changed) is a 409 naming `defaults`, and run 1's
    images, journal and manifest stay exactly as they were."""
    nonces = batches.nonces("ident", 2)
    first = await generate_batch(_spec("ident", comfy_fleet, seconds=0.05, nonces=nonces))
    folder = Path(batch_settings.output_root) / "ident"
    images, journal = _digests(folder), _journal(folder)
    manifest = (folder / "manifest.csv").read_bytes()

    with pytest.raises(BatchConflict) as refused:
        await generate_batch(_spec("ident", comfy_fleet, seconds=0.1, nonces=nonces))

    assert first.done == 2
    assert refused.value.http_status == 409
    assert "defaults" in str(refused.value)
    assert "new_version" in str(refused.value)
    assert (_digests(folder), _journal(folder), (folder / "manifest.csv").read_bytes()) == (images, journal, manifest)


async def test_new_version_gets_its_own_folder_and_each_version_resumes_by_itself(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """With new_version the changed request renders into `<name>.v2`; rerunning either request skips all."""
    nonces = batches.nonces("versions", 2)
    await generate_batch(_spec("versions", comfy_fleet, seconds=0.05, nonces=nonces))
    second = await generate_batch(_spec("versions", comfy_fleet, seconds=0.1, nonces=nonces, new_version=True))
    again = await generate_batch(_spec("versions", comfy_fleet, seconds=0.1, nonces=nonces, new_version=True))
    first_again = await generate_batch(_spec("versions", comfy_fleet, seconds=0.05, nonces=nonces))

    root = Path(batch_settings.output_root)
    assert second.output == str(root / "versions.v2")
    assert second.done == 2
    assert (again.skipped, again.done, first_again.skipped, first_again.done) == (2, 0, 2, 0)
    assert len(_digests(root / "versions")) == len(_digests(root / "versions.v2")) == 2


async def test_concurrent_submissions_of_one_name_never_share_a_journal(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Two runs of one name started at once (steps 2 and 3 in the issue): one renders, the other is refused;
    the folder holds exactly the winner's images and journal, each sha256 matching its file."""
    nonces = batches.nonces("race", 4)
    specs = [_spec("race", comfy_fleet, seconds=0.2, nonces=nonces),
             _spec("race", comfy_fleet, seconds=0.3, nonces=nonces)]  # fmt: skip

    outcomes = await asyncio.gather(*(generate_batch(spec) for spec in specs), return_exceptions=True)

    refused = [outcome for outcome in outcomes if isinstance(outcome, BatchConflict)]
    assert len(refused) == 1, outcomes
    folder = Path(batch_settings.output_root) / "race"
    journal = _journal(folder)
    assert len(journal) == 4
    digests = _digests(folder)
    assert sorted(record["result"]["files"][0]["sha256"] for record in journal) == sorted(digests.values())


async def test_a_failed_job_is_recorded_as_failed_in_the_journal(batch_settings: Settings,
                                                                 comfy_fleet: SuiteFleet) -> None:  # fmt: skip
    """A job whose graph raises is in the journal as failed, with ComfyUI's message, not left `submitted`."""
    graph = batches.through_graph("ComfybatchFail", message="boom from the test")
    spec = batches.node_spec("fails", graph, count=1, servers=server_names(comfy_fleet))

    with pytest.raises(BatchIncomplete):
        await generate_batch(spec)

    (record,) = _journal(Path(batch_settings.output_root) / "fails")
    assert record["state"] == "finished"
    assert record["result"]["status"] == "failed"
    assert "boom from the test" in record["result"]["error"]


async def test_a_cancelled_batch_writes_its_record_and_its_task_runs_end_cancelled(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Cancelled mid-batch: the manifest lists every job (done or cancelled), in-flight jobs are journaled as
    cancelled, no task run is left Crashed, and a rerun resumes (the done images are skipped)."""
    spec = batches.delay_spec("cancelled", seconds=1.0, count=8, servers=server_names(comfy_fleet))
    folder = Path(batch_settings.output_root) / "cancelled"
    run = asyncio.create_task(generate_batch(spec))
    await faults.wait_for(lambda: batches.finished_records(folder) >= 1, timeout_s=60)
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await run

    manifest = read_manifest(OutputStore(batch_settings.output_root), "cancelled")
    assert manifest is not None
    assert len(manifest) == 8
    assert set(manifest["status"]) == {"done", "cancelled"}
    assert not any(record["state"] == "submitted" for record in _journal(folder))
    async with get_client() as client:
        (flow_run,) = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=["cancelled"]))
        )
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id={"any_": [flow_run.id]}))
    assert task_runs
    assert not any(task_run.state_type == StateType.CRASHED for task_run in task_runs)
    done_before = int((manifest["status"] == "done").sum())
    rerun = await generate_batch(spec)
    assert rerun.skipped == done_before
    assert rerun.done == 8 - done_before
