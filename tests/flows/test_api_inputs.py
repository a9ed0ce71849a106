"""Runs the dashboard created (tagged `dashboard`) read input files only from uploads or the configured input root."""

from pathlib import Path

import pytest
from PIL import Image
from prefect import tags

from comfybatch.errors import BatchRequestError
from comfybatch.flows.batch import generate_batch
from comfybatch.flows.origin import API_RUN_TAG
from comfybatch.inputs import UPLOADS_FOLDER
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings, get_settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.flows.test_image_inputs import INVERT

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


def _uploaded_sheet(settings: Settings, cells: list[str]) -> str:
    path = Path(settings.output_root, UPLOADS_FOLDER, "0123456789abcdef-rows.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["image", *cells]) + "\n", encoding="utf-8")
    return str(path)


def _png(path: Path, colour: tuple[int, int, int] = (200, 100, 50)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)
    return str(path)


async def test_api_run_refuses_a_local_path_outside_the_roots_by_row(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """A dashboard run whose uploaded sheet names a file of the worker's machine fails before any prompt, naming the
    row and column; the same sheet started by an operator renders."""
    secret = _png(tmp_path / "home" / "private.png")
    spec = BatchSpec(name="api-local", workflow=INVERT, sheet=_uploaded_sheet(batch_settings, [secret]),
                     servers=server_names(comfy_fleet))  # fmt: skip

    with tags(API_RUN_TAG), pytest.raises(BatchRequestError) as caught:
        await generate_batch(spec)
    operator = await generate_batch(spec)

    assert f"row 2, column 'image': {secret}: only https URLs and uploaded files can be named here" in str(caught.value)
    assert operator.done == 1


async def test_api_run_reads_files_under_the_configured_input_root(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With COMFYBATCH_INPUT_LOCAL_ROOT set, a dashboard run renders sheet cells naming files under it."""
    monkeypatch.setenv("COMFYBATCH_INPUT_LOCAL_ROOT", str(tmp_path / "library"))
    get_settings.cache_clear()
    photos = [_png(tmp_path / "library" / "shoot" / "cup.png", (1, 2, 3)), _png(tmp_path / "library" / "jar.png")]
    spec = BatchSpec(name="api-root", workflow=INVERT, sheet=_uploaded_sheet(batch_settings, photos),
                     servers=server_names(comfy_fleet))  # fmt: skip

    with tags(API_RUN_TAG):
        report = await generate_batch(spec)

    assert (report.done, report.failed) == (2, 0)
