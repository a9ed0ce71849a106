"""The batch flow end to end on real ComfyUI servers and a real Prefect server."""

import json
from pathlib import Path

import pandas as pd
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import graphs

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


def _exists(uri: str) -> bool:
    return Path(uri).is_file()


async def test_batch_from_csv_sheet_renders_every_row(batch_settings: Settings, comfy_fleet: SuiteFleet,
                                                      tmp_path: Path) -> None:  # fmt: skip
    """Six sheet rows become six PNGs, and the manifest lists each with its row, seed, server and sha256."""
    sheet = tmp_path / "prompts.csv"
    pd.DataFrame({"prompt": [f"a lighthouse, variant {i}" for i in range(6)], "seed": list(range(10, 16))}).to_csv(
        sheet, index=False
    )
    spec = BatchSpec(name="csv-batch", workflow=str(graphs.TINY_TXT2IMG), sheet=str(sheet),
                     defaults={"steps": 1}, servers=server_names(comfy_fleet))  # fmt: skip

    report = await generate_batch(spec)

    manifest = read_manifest(OutputStore(batch_settings.output_root), "csv-batch")
    assert manifest is not None
    assert (report.done, report.failed, report.total) == (6, 0, 6)
    assert sorted(manifest["row"]) == [2, 3, 4, 5, 6, 7]
    assert sorted(manifest["seed"]) == list(range(10, 16))
    assert set(manifest["status"]) == {"done"}
    assert all(_exists(uri) for uris in manifest["outputs"] for uri in uris)


async def test_batch_task_runs_and_artifacts_read_in_the_users_terms(batch_settings: Settings,
                                                                     comfy_fleet: SuiteFleet) -> None:  # fmt: skip
    """Task runs are `<batch>-<n>-<slug>` (n from 1) with numeric retry delays and a log line naming prompt, seed,
    server, prompt_id and file; the results table links each image on the dashboard and the summary shows no path
    of the worker."""
    spec = BatchSpec(name="words", workflow=str(graphs.TINY_TXT2IMG), prompts=["a red fox", "a blue jay"],
                     defaults={"steps": 1, "seed": 7}, servers=server_names(comfy_fleet))  # fmt: skip

    state = await generate_batch(spec, return_state=True)
    await APILogHandler.aflush()

    run_id = state.state_details.flow_run_id
    assert run_id is not None
    run_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
    async with get_client() as client:
        task_runs = await client.read_task_runs(flow_run_filter=run_filter)
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[run_id])))  # fmt: skip
    assert sorted(run.name for run in task_runs) == ["words-1-a-red-fox", "words-2-a-blue-jay"]
    assert all(all(isinstance(d, int | float) for d in run.empirical_policy.retry_delay or [0]) for run in task_runs)
    rendered = [log.message for log in logs if "rendered on" in log.message]
    assert len(rendered) == 2
    assert any("prompt 'a red fox', seed 7" in line and "prompt_id" in line and ".png" in line for line in rendered)
    table = json.loads(next(a.data for a in artifacts if a.type == "table"))  # type: ignore[arg-type]
    assert [row["#"] for row in table] == [1, 2]
    assert all(f"/api/batches/{run_id}/items/" in row["image"] for row in table)
    summary = next(str(a.data) for a in artifacts if a.type == "markdown" and "Contact sheet" in str(a.data))
    assert batch_settings.output_root not in summary
    assert f"/api/batches/{run_id}/manifest" in summary


async def test_failed_image_logs_a_sentence_and_no_traceback(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """An image ComfyUI cannot render (a 31 px blur of an 8x8 image) fails naming the node in words, the batch logs
    'the batch stopped: …'; no log line of the run carries a Python traceback."""
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 255}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 1.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    spec = BatchSpec(name="blurred", workflow=graph, bindings={"sigma": "2.inputs.sigma"},
                     sweep=Sweep(axes={"sigma": [1.5]}), servers=server_names(comfy_fleet))  # fmt: skip

    state = await generate_batch(spec, return_state=True)
    await APILogHandler.aflush()

    async with get_client() as client:
        logs = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id])))
    messages = [log.message for log in logs]
    assert state.is_failed()
    assert any("Failed(" in m and "failed in Image Blur (node 2)" in m for m in messages), messages
    assert any(m.startswith("the batch stopped: blurred: 1 of 1 job(s) failed") for m in messages), messages
    assert [m for m in messages if "Traceback" in m] == []
