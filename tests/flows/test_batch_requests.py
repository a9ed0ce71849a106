"""Requests rejected before any GPU time, and the fleet dry run."""

from pathlib import Path

import pandas as pd
import pytest

from comfybatch.errors import BatchRequestError
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches, graphs

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


async def test_bad_sheet_names_row_and_column_and_renders_nothing(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """A width that is no multiple of 8 in row 3 fails the batch before any prompt is queued."""
    sheet = tmp_path / "bad.csv"
    pd.DataFrame({"prompt": ["a cat", "a dog"], "width": [64, 66]}).to_csv(sheet, index=False)
    spec = BatchSpec(name="bad-sheet", workflow=str(graphs.TINY_TXT2IMG), sheet=str(sheet),
                     servers=server_names(comfy_fleet))  # fmt: skip

    with pytest.raises(BatchRequestError) as caught:
        await generate_batch(spec)

    (problem,) = caught.value.problems
    assert (problem.row, problem.column) == (3, "width")
    assert not (Path(batch_settings.output_root) / "bad-sheet").exists()


async def test_dry_run_reports_per_server_eligibility_without_rendering(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """dry_run checks every server and renders nothing."""
    spec = batches.delay_spec("dry", seconds=0.1, count=3, servers=server_names(comfy_fleet), dry_run=True)

    report = await generate_batch(spec)

    assert report.dry_run
    assert report.total == 3
    assert all("can run 3 job(s)" in line for line in report.plan)
    assert not (Path(batch_settings.output_root) / "dry" / "manifest.csv").exists()


async def test_batch_no_server_can_run_fails_fast(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """A checkpoint no server has fails the batch at once, naming the parameter and the value."""
    spec = BatchSpec(name="no-model", workflow=str(graphs.TINY_TXT2IMG), prompts=["a cat"],
                     defaults={"checkpoint": "absent.safetensors"}, servers=server_names(comfy_fleet))  # fmt: skip

    with pytest.raises(BatchRequestError) as caught:
        await generate_batch(spec)

    (problem,) = caught.value.problems
    assert problem.field == "defaults.checkpoint"
    assert "absent.safetensors" in problem.message
