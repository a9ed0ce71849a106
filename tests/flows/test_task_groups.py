"""Issue 11 §3: above the task-run rate Prefect is trusted to record, one task run takes several images, and each
image keeps its own retries, failure and record."""

import re
from pathlib import Path

import pandas as pd  # type: ignore[import-untyped]
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

from comfybatch.errors import BatchIncomplete
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchReport, BatchSpec
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal
from comfybatch.settings import Settings, get_settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import graphs

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS, pytest.mark.timeout(300)]
IMAGES = 20
TRANSIENT, BROKEN = 15, 19  # 0-based: late in the batch, when task runs take several images


async def test_grouped_task_runs_keep_every_image_on_its_own(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Prefect trusted for 0.1 task runs/s, images share task runs named by their range; all 20 images are
    rendered or failed on their own: one transient OOM is retried inside its group, one image that always fails
    is recorded as failed without failing its neighbours."""
    monkeypatch.setenv("COMFYBATCH_TASK_RUNS_PER_S", "0.1")
    get_settings.cache_clear()
    state = tmp_path / "flaky-state"
    failures = [1 if i == TRANSIENT else 99 if i == BROKEN else 0 for i in range(IMAGES)]
    sheet = tmp_path / "sheet.csv"
    keys = [f"{tmp_path.name}-{i}" for i in range(IMAGES)]
    pd.DataFrame({"key": keys, "failures": failures}).to_csv(sheet, index=False)
    graph = graphs.through("ComfybatchFlaky", graphs.unique("groups"), key="k", failures=0, state_dir=str(state))
    name = f"groups-{tmp_path.name[-12:]}".lower().replace("_", "-")
    spec = BatchSpec(name=name, workflow=graph, sheet=str(sheet), servers=server_names(comfy_fleet),
                     bindings={"key": "2.inputs.key", "failures": "2.inputs.failures"})  # fmt: skip

    with pytest.raises(BatchIncomplete) as caught:
        await generate_batch(spec)

    report = caught.value.report
    assert isinstance(report, BatchReport)
    assert (report.done, report.failed) == (IMAGES - 1, 1)
    records = await JobJournal(OutputStore(batch_settings.output_root), name).load()
    by_index = {record.result.job.index: record.result for record in records.values() if record.result}
    assert by_index[BROKEN].status == "failed"
    assert "planned failure" in (by_index[BROKEN].error or "")
    assert by_index[TRANSIENT].status == "done"
    assert all(by_index[i].status == "done" and by_index[i].files for i in range(IMAGES) if i != BROKEN)
    async with get_client() as client:
        task_runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
        )  # fmt: skip
    # `<batch>-<n>-<slug>` for one image, `<batch>-<n>..<m>` for several, numbered from 1
    ranges = [re.fullmatch(rf"{re.escape(name)}-(\d+)(?:\.\.(\d+)|-.+)", run.name) for run in task_runs]
    covered = sorted(i for m in ranges if m for i in range(int(m[1]), int(m[2] or m[1]) + 1))
    assert covered == list(range(1, IMAGES + 1))  # each image in exactly one task run
    assert any(m and m[2] for m in ranges), [run.name for run in task_runs]  # some took several images
    assert len(task_runs) < IMAGES
