"""Requests over the API name input images only from the uploads folder, the configured input root, or https."""

from pathlib import Path

import pytest
from PIL import Image

from comfybatch.dashboard.requests import check_api_request
from comfybatch.errors import BatchRequestError
from comfybatch.expansion import expand_batch
from comfybatch.flows.plan import resolve_workflow
from comfybatch.inputs import UPLOADS_FOLDER, InputPolicy
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(output_root=str(tmp_path / "out"), input_local_root=str(tmp_path / "library"))


def _sheet(settings: Settings, cells: list[str]) -> str:
    """A sheet as PUT /api/uploads keeps it, in the uploads folder."""
    path = Path(settings.output_root, UPLOADS_FOLDER, "0123456789abcdef-rows.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(["image", *cells]) + "\n", encoding="utf-8")
    return str(path)


def test_api_policy_permits_uploads_and_the_input_root_only(settings: Settings, tmp_path: Path) -> None:
    """Uploads and files under the input root are readable; a sibling folder, `..` and relative paths are not."""
    policy = InputPolicy.for_api(settings)

    assert policy.permits(str(tmp_path / "out" / UPLOADS_FOLDER / "a.png"))
    assert policy.permits(str(tmp_path / "library" / "shoot" / "a.png"))
    assert not policy.permits(str(tmp_path / "library-2" / "a.png"))
    assert not policy.permits(str(tmp_path / "library" / ".." / "secret.png"))
    assert not policy.permits("library/a.png")


def test_api_policy_refuses_a_symbolic_link_out_of_the_root(settings: Settings, tmp_path: Path) -> None:
    """A link inside the input root that points elsewhere does not make the file behind it readable."""
    secret = _png(tmp_path / "secret" / "private.png")
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "innocent.png").symlink_to(secret)

    assert not InputPolicy.for_api(settings).permits(str(tmp_path / "library" / "innocent.png"))


def test_without_an_input_root_only_uploads_are_permitted(tmp_path: Path) -> None:
    """With no root configured, the refusal names uploads and https only, not the uploads folder's path."""
    policy = InputPolicy.for_api(Settings(output_root=str(tmp_path / "out")))

    assert policy.local_roots == (str(tmp_path / "out" / UPLOADS_FOLDER),)
    assert policy.refusal("/etc/x.png") == "/etc/x.png: only https URLs and uploaded files can be named here"


def test_sheet_cell_under_the_input_root_expands(settings: Settings, tmp_path: Path) -> None:
    """An uploaded sheet naming a file under the input root becomes an item reading that file."""
    photo = _png(tmp_path / "library" / "shoot" / "cup.png")
    spec = BatchSpec(name="lib", workflow="upscale", sheet=_sheet(settings, [str(photo)]))

    jobs = expand_batch(spec, resolve_workflow("upscale", {}), input_policy=InputPolicy.for_api(settings)).jobs

    assert [job.values["image"] for job in jobs] == [str(photo)]


def test_sheet_cells_outside_the_input_root_are_refused_by_row(settings: Settings, tmp_path: Path) -> None:
    """Cells naming a file elsewhere, or leaving the uploads folder by `..`, are refused naming row, column and the
    root that would be allowed."""
    _png(tmp_path / "library" / "ok.png")
    _png(tmp_path / "secret" / "private.png")
    cells = [str(tmp_path / "library" / "ok.png"), str(tmp_path / "secret" / "private.png"), "../../secret/private.png"]
    spec = BatchSpec(name="lib", workflow="upscale", sheet=_sheet(settings, cells))

    with pytest.raises(BatchRequestError) as caught:
        expand_batch(spec, resolve_workflow("upscale", {}), input_policy=InputPolicy.for_api(settings))

    text = str(caught.value)
    assert "row 2," not in text
    for row in (3, 4):
        assert f"row {row}, column 'image'" in text
    assert f"only https URLs and uploaded files can be named here, or files under {tmp_path / 'library'}" in text


def test_api_request_images_under_the_input_root_pass_and_others_are_refused(
    settings: Settings, tmp_path: Path
) -> None:
    """`images` entries under the input root are accepted over the API; another path is refused naming images[n]."""
    inside = str(_png(tmp_path / "library" / "a.png"))
    outside = str(_png(tmp_path / "elsewhere" / "b.png"))

    check_api_request(BatchSpec(name="ok", workflow="upscale", images=[inside]), settings)
    with pytest.raises(BatchRequestError) as caught:
        check_api_request(BatchSpec(name="no", workflow="upscale", images=[inside, outside]), settings)

    assert [problem.field for problem in caught.value.problems] == ["images[1]"]


def test_an_object_store_input_root_permits_its_own_prefix_only(tmp_path: Path) -> None:
    """With `s3://library/photos` as the input root, objects under that prefix are readable; a sibling prefix,
    another bucket and a `..` path are not."""
    policy = InputPolicy.for_api(Settings(output_root=str(tmp_path / "out"), input_local_root="s3://library/photos"))

    assert policy.permits("s3://library/photos/shoot-1/a.png")
    assert not policy.permits("s3://library/photos-old/a.png")
    assert not policy.permits("s3://other/photos/a.png")
    assert not policy.permits("s3://library/photos/../private/a.png")
