"""GPU-seconds: ComfyUI's execution time read from a history entry, and the manifest column that keeps it."""

import io

import pandas as pd  # type: ignore[import-untyped]
import pytest

from comfybatch.comfy.protocol import HistoryEntry
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import JobResult, JobSpec
from comfybatch.outputs.manifest import read_manifest, write_manifest
from comfybatch.outputs.storage import OutputStore


def _entry(*messages: list[object]) -> HistoryEntry:
    return HistoryEntry.model_validate({"status": {"status_str": "success", "completed": True,
                                                   "messages": list(messages)}})  # fmt: skip


def test_execution_s_runs_from_execution_start_to_execution_success() -> None:
    """Both timestamps are milliseconds of the server's clock; cached-node messages between them do not matter."""
    entry = _entry(["execution_start", {"prompt_id": "p", "timestamp": 1_700_000_000_000}],
                   ["execution_cached", {"nodes": [], "prompt_id": "p", "timestamp": 1_700_000_000_001}],
                   ["execution_success", {"prompt_id": "p", "timestamp": 1_700_000_002_500}])  # fmt: skip

    assert entry.execution_s == pytest.approx(2.5)


@pytest.mark.parametrize(
    "messages",
    [
        [["execution_start", {"timestamp": 1000}]],
        [["execution_success", {"timestamp": 1000}]],
        [["execution_start", {"timestamp": "soon"}], ["execution_success", {"timestamp": 1000}]],
        [["execution_start", {"timestamp": 2000}], ["execution_success", {"timestamp": 1000}]],
    ],
)
def test_execution_s_is_unknown_without_both_times(messages: list[list[object]]) -> None:
    """A missing, malformed or backwards time gives no execution time rather than a wrong one."""
    assert _entry(*messages).execution_s is None


def test_manifest_keeps_gpu_seconds_in_parquet_and_csv(workflow: ApiWorkflow, memory_store: OutputStore) -> None:
    """The manifest's gpu_seconds column reads back equal from both files; unknown is empty, not zero."""
    jobs = [JobSpec(batch="cats", index=n, key=f"k{n}", item=n, values={}, workflow=workflow) for n in range(2)]
    results = [JobResult(job=jobs[0], status="done", gpu_seconds=1.25), JobResult(job=jobs[1], status="failed")]

    write_manifest(memory_store, "cats", results)
    frame = read_manifest(memory_store, "cats")

    csv = pd.read_csv(io.BytesIO(memory_store.read_bytes("cats/manifest.csv")))
    assert frame is not None
    assert frame["gpu_seconds"].iloc[0] == pytest.approx(1.25)
    assert pd.isna(frame["gpu_seconds"].iloc[1])
    assert csv["gpu_seconds"].iloc[0] == pytest.approx(1.25)
    assert pd.isna(csv["gpu_seconds"].iloc[1])
