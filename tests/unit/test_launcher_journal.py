"""The dashboard's journal reads during a run's execution: what is reused, what is read again."""

import time
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

import pytest
from prefect.client.schemas.objects import FlowRun
from prefect.states import Running

from comfybatch.dashboard.launcher import Launcher
from comfybatch.models import BatchSpec, JobResult
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal
from comfybatch.settings import Settings
from tests.support.batches import journal_job

pytestmark = pytest.mark.anyio


async def test_an_execution_reads_again_only_the_failed_records_an_earlier_one_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a run executes again in place (Prefect's Retry), a failed record the earlier execution left is read on
    every poll (this execution renders it again); done records and this execution's own failures are reused."""
    store = OutputStore(str(tmp_path))
    journal = JobJournal(store, "b")
    began = time.time()
    await journal.finished(JobResult(job=journal_job(0), status="done", finished_at=began - 60))
    await journal.finished(JobResult(job=journal_job(1), status="failed", finished_at=began - 30))  # earlier execution
    await journal.finished(JobResult(job=journal_job(2), status="failed", finished_at=began + 5))  # this execution
    launcher = Launcher(Settings(output_root=str(tmp_path)))
    run = FlowRun(flow_id=uuid4(), name="b", run_count=2, state=Running(timestamp=datetime.fromtimestamp(began, UTC)))
    spec = BatchSpec(name="b", workflow="txt2img-tiny")
    first = await launcher.records(spec, run)
    reads: list[str] = []
    read_bytes = OutputStore.read_bytes

    def counted(self: OutputStore, relpath: str) -> bytes:
        reads.append(relpath.rpartition("/")[2])
        return read_bytes(self, relpath)

    monkeypatch.setattr(OutputStore, "read_bytes", counted)
    second = await launcher.records(spec, run)

    assert sorted(first) == sorted(second) == ["k0", "k1", "k2"]
    assert reads == ["k1.json"]
