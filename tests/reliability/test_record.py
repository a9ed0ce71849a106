"""Every ending writes the record (issue 10): a batch whose flow-run process is SIGKILLed still gets its manifest."""

import os
import signal
from pathlib import Path

import anyio
import pandas as pd
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, _descendants, platform_prefect, serve_env, serving
from tests.support import batches, faults

__all__ = ["platform_prefect"]
pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


async def test_a_batch_whose_process_is_killed_gets_its_manifest_and_no_running_task_runs(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """SIGKILL of the flow-run process mid-batch: the runner marks the run Crashed and its `on_crashed` hook writes
    the manifest from the stored plan and journal (done rows and the rest `cancelled`, with why), a summary
    artifact, and leaves no task run Running."""
    server = comfy_fleet.servers[0]
    spec = batches.delay_spec("killed-mid-batch", seconds=1.0, count=8, servers=[])
    env = serve_env(platform_prefect.api_url, SuiteFleet([server], None), tmp_path)
    out = tmp_path / "out" / spec.name
    with serving(platform_prefect.api_url, env, tmp_path, GENERATE_BATCH) as serve:
        async with PrefectClient(platform_prefect.api_url) as prefect:
            deployment = await prefect.read_deployment_by_name(GENERATE_BATCH)
            parameters = {"spec": spec.model_dump(mode="json")}
            run = await prefect.create_flow_run_from_deployment(deployment.id, parameters=parameters)
            await faults.wait_for(lambda: batches.finished_records(out) >= 2, timeout_s=120)
            for pid, _ in _descendants(serve.process.pid):
                os.kill(pid, signal.SIGKILL)

            for _ in range(120):  # the runner sees its child gone, marks the run Crashed and runs the hook
                final = await prefect.read_flow_run(run.id)
                if final.state is not None and final.state.type.value in TERMINAL:
                    break
                await anyio.sleep(0.5)
            await faults.wait_for(lambda: (out / "manifest.csv").is_file(), timeout_s=30)
            task_runs = await prefect.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])))
            artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
            for _ in range(40):  # written right after the manifest
                artifacts = await prefect.read_artifacts(artifact_filter=artifact_filter)
                if any(artifact.key == f"{spec.name}-summary" for artifact in artifacts):
                    break
                await anyio.sleep(0.5)

    manifest = pd.read_csv(out / "manifest.csv")
    assert final.state is not None
    assert final.state.type.value == "CRASHED"
    assert len(manifest) == 8
    assert set(manifest["status"]) == {"done", "cancelled"}
    assert (manifest["status"] == "done").sum() >= 2
    assert not [task_run for task_run in task_runs if task_run.state_type is not None
                and task_run.state_type.value == "RUNNING"]  # fmt: skip
    assert any(artifact.key == f"{spec.name}-summary" for artifact in artifacts)
