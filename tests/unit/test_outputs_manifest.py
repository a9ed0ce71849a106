"""The batch manifest: columns, types, parameters, and round trips through Parquet and CSV."""

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd  # type: ignore[import-untyped]
import pytest

from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import JobResult, JobSpec, JobStatus, StoredFile
from comfybatch.outputs.manifest import MANIFEST_COLUMNS, manifest_frame, read_manifest, write_manifest
from comfybatch.outputs.storage import OutputStore

TEMPLATE = Path(__file__).parents[2] / "comfybatch" / "templates" / "txt2img-tiny.json"
T0 = 1_700_000_000.123456


def _result(workflow: ApiWorkflow, index: int, status: JobStatus = "done", files: int = 1, **values: Any) -> JobResult:
    job = JobSpec(
        batch="cats", index=index, key=f"key{index}", item=index, values=values, seed=values.get("seed"),
        label="a-cat", workflow=workflow,
    )  # fmt: skip
    stored = [
        StoredFile(uri=f"memory:///out/cats/{index}_{n}.png", sha256=f"{index}{n}" * 8, size_bytes=10, node_id="7")
        for n in range(files if status == "done" else 0)
    ]
    timed = status == "done"
    return JobResult(
        job=job, status=status, server="gpu-a" if timed else None, prompt_id=f"p{index}" if timed else None,
        attempts=1, queued_at=T0 if timed else None, started_at=T0 + 1 if timed else None,
        finished_at=T0 + 3.5 if timed else None, files=stored, error=None if timed else "boom",
        comfyui_version="0.3.75" if timed else None,
    )  # fmt: skip


@pytest.fixture
def results(workflow: ApiWorkflow) -> list[JobResult]:
    return [
        _result(workflow, 2, "failed", seed=3, steps="many", cfg=7.5),
        _result(workflow, 0, files=2, seed=1, steps=20, cfg=7, prompt="a cat"),
        _result(workflow, 1, seed=2, steps=30, cfg=8, prompt="a dog"),
    ]


def test_manifest_frame_has_fixed_then_param_columns(results: list[JobResult]) -> None:
    """The fixed columns come first, then one `param.<name>` per parameter of any job, sorted."""
    frame = manifest_frame(results)

    params = ["param.cfg", "param.prompt", "param.seed", "param.steps"]
    assert list(frame.columns) == [*MANIFEST_COLUMNS, *params]


def test_manifest_frame_sorts_rows_by_index(results: list[JobResult]) -> None:
    """Rows follow the job index, whatever order the results came in."""
    frame = manifest_frame(results)

    assert frame["index"].tolist() == [0, 1, 2]
    assert frame["job_key"].tolist() == ["cats-00000", "cats-00001", "cats-00002"]


def test_manifest_frame_timestamps_are_utc_with_nat_for_unknown(results: list[JobResult]) -> None:
    """Timestamps are timezone-aware UTC datetimes, and NaT where a job never ran."""
    frame = manifest_frame(results)

    assert str(frame["queued_at"].dtype) == "datetime64[us, UTC]"
    assert frame["queued_at"][0] == pd.Timestamp(T0, unit="s", tz="UTC").round("us")
    assert pd.isna(frame["started_at"][2])


def test_manifest_frame_duration_runs_from_start_to_finish(results: list[JobResult]) -> None:
    """`duration_s` is finish minus start, and NaN when either is unknown."""
    frame = manifest_frame(results)

    assert frame["duration_s"][0] == pytest.approx(2.5)
    assert pd.isna(frame["duration_s"][2])


def test_manifest_frame_lists_output_uris_and_hashes(results: list[JobResult]) -> None:
    """`outputs` and `sha256` are parallel lists, empty for a failed job."""
    frame = manifest_frame(results)

    assert frame["outputs"][0] == ["memory:///out/cats/0_0.png", "memory:///out/cats/0_1.png"]
    assert frame["sha256"][0] == ["00" * 8, "01" * 8]
    assert (frame["outputs"][2], frame["sha256"][2]) == ([], [])


def test_manifest_frame_values_json_has_sorted_keys(results: list[JobResult]) -> None:
    """`values_json` is the job's values as JSON with sorted keys."""
    frame = manifest_frame(results)

    assert frame["values_json"][1] == '{"cfg": 8, "prompt": "a dog", "seed": 2, "steps": 30}'


def test_manifest_frame_numeric_params_keep_numeric_dtypes(workflow: ApiWorkflow) -> None:
    """Ints stay Int64, ints mixed with floats become Float64, bools stay boolean; absent is NA."""
    frame = manifest_frame([_result(workflow, 0, steps=20, cfg=7, tiled=True), _result(workflow, 1, steps=30, cfg=7.5)])

    dtypes = {column: str(frame[column].dtype) for column in ("param.steps", "param.cfg", "param.tiled")}
    assert dtypes == {"param.steps": "Int64", "param.cfg": "Float64", "param.tiled": "boolean"}
    assert pd.isna(frame["param.tiled"][1])


def test_manifest_frame_mixed_params_become_strings(results: list[JobResult]) -> None:
    """A parameter holding ints in some jobs and text in others becomes a string column."""
    frame = manifest_frame(results)

    assert str(frame["param.steps"].dtype) == "string"
    assert frame["param.steps"].tolist() == ["20", "30", "many"]


def test_manifest_frame_structured_params_become_json_text(workflow: ApiWorkflow) -> None:
    """List and object parameter values are stored as JSON text."""
    frame = manifest_frame([_result(workflow, 0, loras=[{"name": "x", "weight": 0.5}])])

    assert json.loads(frame["param.loras"][0]) == [{"name": "x", "weight": 0.5}]


def test_write_manifest_round_trips_through_parquet(store: OutputStore, results: list[JobResult]) -> None:
    """Reading the written Parquet manifest gives back the same frame, types included."""
    write_manifest(store, "cats", results)

    pd.testing.assert_frame_equal(read_manifest(store, "cats"), manifest_frame(results))


def test_read_manifest_round_trips_through_csv(tmp_path: Path, results: list[JobResult]) -> None:
    """Without the Parquet file, the CSV manifest gives back the same frame, types included."""
    store = OutputStore(tmp_path)
    write_manifest(store, "cats", results)
    (tmp_path / "cats" / "manifest.parquet").unlink()

    pd.testing.assert_frame_equal(read_manifest(store, "cats"), manifest_frame(results))


def test_write_manifest_csv_joins_lists_with_semicolons(store: OutputStore, results: list[JobResult]) -> None:
    """In the CSV, the output URIs of a job are one cell joined with `;`."""
    write_manifest(store, "cats", results)

    csv = pd.read_csv(io.BytesIO(store.read_bytes("cats/manifest.csv")), dtype=str, keep_default_na=False)
    assert csv["outputs"][0] == "memory:///out/cats/0_0.png;memory:///out/cats/0_1.png"


def test_write_manifest_returns_both_uris(store: OutputStore, results: list[JobResult]) -> None:
    """`write_manifest` returns the Parquet and CSV URIs, in that order."""
    uris = write_manifest(store, "cats", results)

    assert uris == (store.uri("cats/manifest.parquet"), store.uri("cats/manifest.csv"))


def test_write_manifest_all_failed_batch_round_trips(store: OutputStore, workflow: ApiWorkflow) -> None:
    """A batch whose lists are all empty still writes typed Parquet that reads back equal."""
    failed = [_result(workflow, 0, "failed", seed=1), _result(workflow, 1, "failed", seed=2)]

    write_manifest(store, "cats", failed)

    pd.testing.assert_frame_equal(read_manifest(store, "cats"), manifest_frame(failed))


def test_write_manifest_empty_batch_round_trips(store: OutputStore) -> None:
    """An empty batch writes a manifest with every fixed column and no rows."""
    write_manifest(store, "cats", [])

    pd.testing.assert_frame_equal(read_manifest(store, "cats"), manifest_frame([]))


def test_read_manifest_absent_is_none(store: OutputStore) -> None:
    """A batch folder without a manifest reads as None."""
    assert read_manifest(store, "never-ran") is None
