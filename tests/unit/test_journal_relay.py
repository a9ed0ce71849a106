"""A sharded batch's run tells the shards' images in its own stream: each newly recorded state once."""

from pathlib import Path
from typing import Any

import pytest

from comfybatch.flows import relay as relay_module
from comfybatch.flows.relay import JournalRelay
from comfybatch.models import JobResult, StoredFile
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal
from tests.support.batches import journal_job

pytestmark = pytest.mark.anyio


async def test_each_recorded_state_is_told_once_and_earlier_ones_never(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job 0 finished before the relay started (an earlier run told it); job 1 is submitted then done, job 2 fails:
    running, done and failed are told once each, in the batch's own stream."""
    told: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(relay_module, "emit_item_event",
                        lambda job, state, **payload: told.append((job.key, state, payload)))  # fmt: skip
    journal = JobJournal(OutputStore(str(tmp_path)), "b")
    jobs = [journal_job(i) for i in range(3)]
    await journal.finished(JobResult(job=jobs[0], status="done", server="s"))
    relay = JournalRelay(journal, jobs)
    await relay.start()

    await journal.submitted(jobs[1], server="gpu-a", prompt_id="p1")
    first = await relay.relay()
    file = StoredFile(uri="b/00001.png", sha256="0" * 64, size_bytes=1, node_id="3")
    await journal.finished(JobResult(job=jobs[1], status="done", server="gpu-a", prompt_id="p1", files=[file]))
    await journal.finished(JobResult(job=jobs[2], status="failed", server="gpu-b", error="out of memory"))
    second = await relay.relay()
    third = await relay.relay()

    assert (first, second, third) == (1, 2, 0)
    states = {(key, state): payload for key, state, payload in told}
    assert told[0][:2] == ("k1", "running")
    assert sorted(states) == [("k1", "done"), ("k1", "running"), ("k2", "failed")]
    assert states["k1", "done"]["files"] == ["b/00001.png"]
    assert states["k2", "failed"]["error"] == "out of memory"
