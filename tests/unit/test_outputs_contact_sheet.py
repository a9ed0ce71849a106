"""Contact sheets and XY grids: layout, aspect ratio, placeholders, caps, and what a batch writes."""

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import JobResult, JobSpec, JobStatus, StoredFile
from comfybatch.outputs._draw import ALERT
from comfybatch.outputs.contact_sheet import Thumbnails, contact_sheet, write_contact_sheets, xy_grid
from comfybatch.outputs.storage import OutputStore

TEMPLATE = Path(__file__).parents[2] / "comfybatch" / "templates" / "txt2img-tiny.json"
RED, GREEN, BLUE, YELLOW = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)
THUMB = 32
PAD = 4  # the sheet's padding for thumbnails under 128 px


def _png(color: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _box(image: Image.Image, color: tuple[int, int, int]) -> tuple[int, int, int, int]:
    """The bounding box (left, top, right, bottom) of the pixels of exactly `color`."""
    ys, xs = np.nonzero(np.all(np.asarray(image.convert("RGB")) == color, axis=-1))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _has_color(image: Image.Image, color: tuple[int, int, int]) -> bool:
    return bool(np.all(np.asarray(image.convert("RGB")) == color, axis=-1).any())


def _has_placeholder(image: Image.Image) -> bool:
    """Whether the placeholder's red text shows (anti-aliased: reddish, not exactly `ALERT`)."""
    red, green, blue = (np.asarray(image.convert("RGB")).astype(int)[..., channel] for channel in range(3))
    return bool(((red - green > ALERT[0] // 2) & (red - blue > ALERT[0] // 2)).any())


def _stored_result(
    store: OutputStore, workflow: ApiWorkflow, index: int, color: tuple[int, int, int] | None, **values: int | str
) -> JobResult:
    """A result whose image (if `color`) is in `store`; without a color the job failed."""
    status: JobStatus = "done" if color else "failed"
    files = []
    if color:
        uri = store.write_bytes(f"cats/{index}.png", _png(color))
        files = [StoredFile(uri=uri, sha256="0" * 64, size_bytes=1, node_id="7")]
    job = JobSpec(
        batch="cats", index=index, key=f"k{index}", item=0, values={**values, "seed": index}, seed=index,
        label="a-cat", workflow=workflow,
    )  # fmt: skip
    return JobResult(job=job, status=status, files=files, error=None if color else "boom")


def test_contact_sheet_width_fits_columns() -> None:
    """The sheet is as wide as its columns of thumbnails with padding, whatever the row count."""
    sheet = contact_sheet([(_png(RED), "x")] * 5, thumb_px=THUMB, columns=3)

    assert sheet.width == PAD + 3 * (THUMB + PAD)


def test_contact_sheet_places_tiles_row_by_row() -> None:
    """Tiles fill the first row left to right, then the next row."""
    tiles = [(_png(RED), "0"), (_png(GREEN), "1"), (_png(BLUE), "2")]

    sheet = contact_sheet(tiles, thumb_px=THUMB, columns=2)

    red, green, blue = (_box(sheet, color) for color in (RED, GREEN, BLUE))
    assert (green[0] > red[0], green[1] == red[1]) == (True, True)
    assert (blue[0] == red[0], blue[1] > red[3]) == (True, True)


def test_contact_sheet_keeps_aspect_ratio() -> None:
    """A wide image is scaled to the thumbnail width and letterboxed, not stretched."""
    sheet = contact_sheet([(_png(RED, size=(200, 100)), "wide")], thumb_px=THUMB)

    left, top, right, bottom = _box(sheet, RED)
    assert (right - left, bottom - top) == (THUMB, THUMB // 2)


@pytest.mark.parametrize("image", [None, Path("/nonexistent/render.png"), b"not an image"])
def test_contact_sheet_shows_placeholder_for_missing_image(image: bytes | Path | None) -> None:
    """An absent, missing or unreadable image is drawn as a placeholder instead of failing."""
    sheet = contact_sheet([(_png(GREEN), "ok"), (image, "broken")], thumb_px=64)

    assert _has_placeholder(sheet)
    assert _has_color(sheet, GREEN)


def test_contact_sheet_long_label_does_not_widen_sheet() -> None:
    """A very long label is truncated to its tile's width."""
    short = contact_sheet([(_png(RED), "cat")], thumb_px=THUMB)
    long = contact_sheet([(_png(RED), "a cat " * 200)], thumb_px=THUMB)

    assert long.size == short.size


def test_contact_sheet_caps_tiles_with_a_footer() -> None:
    """Beyond `max_tiles` the rest is left out and a footer line is added."""
    exact = contact_sheet([(_png(RED), "x")] * 4, thumb_px=THUMB, max_tiles=4)
    capped = contact_sheet([(_png(RED), "x")] * 9, thumb_px=THUMB, max_tiles=4)

    assert capped.width == exact.width
    assert capped.height > exact.height


def test_xy_grid_has_one_cell_per_value_pair() -> None:
    """A 3 x 2 sweep is one thumbnail column wider than 2 x 2 and one row taller than 3 x 1."""

    def grid(xs: list[int], ys: list[str]) -> Image.Image:
        cells = {(x, y): _png(RED) for x in xs for y in ys}
        return xy_grid(cells, x_name="steps", y_name="sampler", x_values=xs, y_values=ys, thumb_px=THUMB)

    three_by_two = grid([10, 20, 30], ["euler", "ddim"])

    assert three_by_two.width - grid([10, 20], ["euler", "ddim"]).width == THUMB + PAD
    assert three_by_two.height - grid([10, 20, 30], ["euler"]).height == THUMB + PAD


def test_xy_grid_puts_cells_under_their_headers() -> None:
    """Cell (x, y) is in x's column and y's row."""
    cells = {(1, "a"): _png(RED), (2, "a"): _png(GREEN), (1, "b"): _png(BLUE), (2, "b"): _png(YELLOW)}

    grid = xy_grid(cells, x_name="x", y_name="y", x_values=[1, 2], y_values=["a", "b"], thumb_px=THUMB)

    red, green, blue, yellow = (_box(grid, color) for color in (RED, GREEN, BLUE, YELLOW))
    assert (red[1] == green[1], red[0] < green[0], blue[0] == red[0], blue[1] > red[1]) == (True,) * 4
    assert (yellow[0], yellow[1]) == (green[0], blue[1])


def test_xy_grid_shows_placeholder_for_absent_cell() -> None:
    """A value pair with no image is drawn as a placeholder."""
    grid = xy_grid({(1, "a"): _png(RED)}, x_name="x", y_name="y", x_values=[1, 2], y_values=["a"], thumb_px=64)

    assert _has_placeholder(grid)


def test_write_contact_sheets_writes_sheet_and_xy_grid(store: OutputStore, workflow: ApiWorkflow) -> None:
    """With two sweep axes, both PNGs are written and the grid has a cell per value pair."""
    results = [
        _stored_result(store, workflow, index, RED, cfg=cfg, sampler=sampler)
        for index, (cfg, sampler) in enumerate((c, s) for s in ("euler", "ddim") for c in (4, 7, 9))
    ]
    expected = xy_grid(
        {}, x_name="cfg", y_name="sampler", x_values=[4, 7, 9], y_values=["euler", "ddim"], thumb_px=THUMB
    )

    uris = write_contact_sheets(store, "cats", results, sweep_axes=["cfg", "sampler"], thumb_px=THUMB).uris

    assert uris == [store.uri("cats/contact_sheet.png"), store.uri("cats/xy_grid.png")]
    assert Image.open(io.BytesIO(store.read_bytes("cats/xy_grid.png"))).size == expected.size


def test_write_contact_sheets_without_two_axes_writes_only_sheet(store: OutputStore, workflow: ApiWorkflow) -> None:
    """Without exactly two sweep axes, only the contact sheet is written."""
    results = [_stored_result(store, workflow, 0, RED, cfg=4)]

    uris = write_contact_sheets(store, "cats", results, sweep_axes=["cfg"], thumb_px=THUMB).uris

    assert (uris, store.exists("cats/xy_grid.png")) == ([store.uri("cats/contact_sheet.png")], False)


def test_write_contact_sheets_draws_failed_job_as_placeholder(store: OutputStore, workflow: ApiWorkflow) -> None:
    """A failed job keeps its place on the sheet as a placeholder."""
    results = [_stored_result(store, workflow, 0, GREEN), _stored_result(store, workflow, 1, None)]

    write_contact_sheets(store, "cats", results, thumb_px=64)

    sheet = Image.open(io.BytesIO(store.read_bytes("cats/contact_sheet.png")))
    assert (_has_color(sheet, GREEN), _has_placeholder(sheet)) == (True, True)


def test_write_contact_sheets_caps_at_400_tiles(store: OutputStore, workflow: ApiWorkflow) -> None:
    """A batch of 401 jobs gives a sheet of 400 tiles (20 columns) plus a footer."""
    results = [_stored_result(store, workflow, index, None) for index in range(401)]
    full = contact_sheet([(None, "#0  seed 0\na-cat")] * 400, thumb_px=4)

    write_contact_sheets(store, "cats", results, thumb_px=4)

    sheet = Image.open(io.BytesIO(store.read_bytes("cats/contact_sheet.png")))
    assert sheet.width == full.width == PAD + 20 * (4 + PAD)
    assert sheet.height > full.height


def test_contact_sheet_preview_is_a_small_jpeg_of_the_sheet(store: OutputStore, workflow: ApiWorkflow) -> None:
    """The sheet's preview is a data: URI of a JPEG no larger than the limit, with the sheet's proportions."""
    results = [_stored_result(store, workflow, index, GREEN) for index in range(6)]

    preview = write_contact_sheets(store, "cats", results, thumb_px=64, preview_px=100).preview

    assert preview.startswith("data:image/jpeg;base64,")
    sheet = Image.open(io.BytesIO(store.read_bytes("cats/contact_sheet.png")))
    with Image.open(io.BytesIO(base64.b64decode(preview.split(",", 1)[1]))) as image:
        assert max(image.size) == 100
        assert abs(image.width / image.height - sheet.width / sheet.height) < 0.05
        pixels = np.asarray(image.convert("RGB")).astype(int)
        assert (np.abs(pixels - GREEN).max(axis=-1) < 40).any()  # the tiles show, through JPEG's rounding


@pytest.mark.anyio
async def test_tiles_made_as_images_land_are_pasted_without_reading_the_images_again(
    store: OutputStore, workflow: ApiWorkflow
) -> None:
    """An image's tile is made when its job lands; the sheet drawn at the end uses it, so an image gone from the
    store by then still shows (without the tiles it is a "missing" placeholder)."""
    results = [_stored_result(store, workflow, 0, GREEN), _stored_result(store, workflow, 1, BLUE)]
    thumbnails = Thumbnails([result.job for result in results], thumb_px=64)
    thumbnails.landed(store, results[0])
    await thumbnails.settled()
    store.delete("cats/0.png")
    store.delete("cats/1.png")

    write_contact_sheets(store, "cats", results, thumb_px=64, thumbnails=thumbnails)

    sheet = Image.open(io.BytesIO(store.read_bytes("cats/contact_sheet.png")))
    assert (_has_color(sheet, GREEN), _has_color(sheet, BLUE), _has_placeholder(sheet)) == (True, False, True)
