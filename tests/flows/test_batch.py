"""The batch flow end to end on real ComfyUI servers and a real Prefect server."""

from pathlib import Path

import pandas as pd
import pytest

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec
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
