"""Contact sheets and XY grids of a batch's images: Pillow only, one source image open at a time."""

import asyncio
import base64
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

from PIL import Image, ImageDraw
from pydantic import JsonValue

from comfybatch.errors import StorageError
from comfybatch.models import JobResult, JobSpec
from comfybatch.outputs import _draw
from comfybatch.outputs._draw import Tile, TileImage
from comfybatch.outputs.manifest import media_type_of
from comfybatch.outputs.storage import OutputStore, check_relpath

CONTACT_SHEET = "contact_sheet.png"
XY_GRID = "xy_grid.png"
MAX_TILES = 400  # 20 x 20 thumbnails of 256 px: a ~5,500 px square PNG, however large the batch
MAX_AXIS_VALUES = 20
_MAX_LABEL_LINES = 3


def contact_sheet(
    tiles: Sequence[tuple[TileImage, str]],
    *,
    thumb_px: int = 256,
    columns: int | None = None,
    max_tiles: int = MAX_TILES,
) -> Image.Image:
    """Draw thumbnails in a grid, each with its label (newlines start new lines, up to 3) below.

    Thumbnails keep their aspect ratio on a grey letterbox. `None`, a missing file or bytes Pillow
    cannot read show a "missing" or "unreadable" placeholder. Only the first `max_tiles` are drawn,
    and a footer then says how many were left out.
    """
    shown = [Tile(_draw.given(image), label) for image, label in tiles[:max_tiles]]
    return _sheet(shown, total=len(tiles), thumb_px=thumb_px, columns=columns)


def xy_grid(
    cells: Mapping[tuple[Any, Any], TileImage],  # (x, y) JSON values; Any because Mapping keys are invariant
    *,
    x_name: str,
    y_name: str,
    x_values: Sequence[JsonValue],
    y_values: Sequence[JsonValue],
    thumb_px: int = 256,
    max_axis_values: int = MAX_AXIS_VALUES,
) -> Image.Image:
    """Draw one thumbnail per `(x, y)` cell: x values head the columns, y values the rows.

    Absent or `None` cells show a "missing" placeholder. At most `max_axis_values` per axis are
    drawn; a footer says when some were left out.
    """
    tiles = {(_canonical(x), _canonical(y)): Tile(_draw.given(image)) for (x, y), image in cells.items()}
    missing = Tile(_draw.given(None))
    return _xy(
        lambda x, y: tiles.get((_canonical(x), _canonical(y)), missing),
        names=(x_name, y_name),
        axes=(x_values, y_values),
        thumb_px=thumb_px,
        max_axis_values=max_axis_values,
    )


class Thumbnails:
    """Contact-sheet tiles made while a batch runs, as its images land, one at a time on a thread of their own: the
    batch's end then pastes them instead of decoding every image (about 19 ms for a 1024 px PNG, so 7.5 s for a
    full sheet). Holds the tiles of the first MAX_TILES jobs only: at most 400 thumbnails of 256 px, under 80 MB."""

    def __init__(self, jobs: Sequence[JobSpec], *, thumb_px: int = 256) -> None:
        self.thumb_px = thumb_px
        self._wanted = {job.key for job in sorted(jobs, key=lambda job: job.index)[:MAX_TILES]}
        self._made: dict[str, Image.Image] = {}  # image URI -> its tile
        self._pending: set[asyncio.Future[None]] = set()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfybatch-tiles")

    def landed(self, store: OutputStore, result: JobResult) -> None:
        """Make `result`'s tile soon if the sheet shows it; never waited for here (the job's slot goes on)."""
        if result.job.key not in self._wanted or (uri := _first_image(result)) is None:
            return
        made = asyncio.get_running_loop().run_in_executor(self._executor, self._make, store, uri)
        self._pending.add(made)
        made.add_done_callback(self._pending.discard)

    def tile(self, uri: str) -> Image.Image | None:
        return self._made.get(uri)

    async def settled(self) -> None:
        """Wait for the tiles still being made (the sheet is drawn next); none are made after."""
        await asyncio.gather(*self._pending, return_exceptions=True)  # an unreadable image is read again, and says so
        self._executor.shutdown(wait=False)

    def _make(self, store: OutputStore, uri: str) -> None:
        source = _read(store, uri)
        thumb, _ = _draw.shrink(source, self.thumb_px) if source is not None else (None, "")
        if thumb is not None:
            self._made[uri] = thumb


class ContactSheets(NamedTuple):
    uris: list[str]
    preview: str  # the contact sheet as a small JPEG `data:` URI, for markdown the Prefect UI shows inline


def write_contact_sheets(
    store: OutputStore,
    batch_dir: str,
    results: Sequence[JobResult],
    *,
    sweep_axes: Sequence[str] = (),
    thumb_px: int = 256,
    preview_px: int = 720,
    thumbnails: Thumbnails | None = None,
) -> ContactSheets:
    """Write `<batch_dir>/contact_sheet.png` and, for exactly two `sweep_axes`, `xy_grid.png`; return their URIs
    and the sheet's preview (made from the sheet in memory: reading a 5,000 px PNG back costs a third of a second).

    The sheet shows every job by index (failed ones as placeholders), labelled with its number (from 1), seed
    and label, capped at `MAX_TILES`. The grid shows, per pair of axis values, the first image.

    Raises:
        UnsafePath, StorageError: writing failed (unreadable inputs only become placeholders).
    """
    batch_dir = check_relpath(batch_dir)
    ordered = sorted(results, key=lambda result: result.job.index)
    made = thumbnails if thumbnails is not None and thumbnails.thumb_px == thumb_px else None
    tiles = [_job_tile(store, result, made) for result in ordered[:MAX_TILES]]
    sheet = _sheet(tiles, total=len(ordered), thumb_px=thumb_px, columns=None)
    # The preview is made beside the sheet's encoding (Pillow lets go of the GIL in both): it then costs nothing.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="comfybatch-preview") as beside:
        previewing = beside.submit(_preview_data_uri, sheet, max_px=preview_px)
        encoded = _png(sheet, close=False)
        preview = previewing.result()
    sheet.close()
    uris = [store.write_bytes(f"{batch_dir}/{CONTACT_SHEET}", encoded)]
    if len(sweep_axes) == 2:
        grid = _batch_xy_grid(store, ordered, x_name=sweep_axes[0], y_name=sweep_axes[1], thumb_px=thumb_px,
                              thumbnails=made)  # fmt: skip
        uris.append(store.write_bytes(f"{batch_dir}/{XY_GRID}", _png(grid)))
    return ContactSheets(uris, preview)


def _sheet(tiles: Sequence[Tile], *, total: int, thumb_px: int, columns: int | None) -> Image.Image:
    pad = max(4, thumb_px // 32)
    face = _draw.font(max(10, thumb_px // 16))
    step = _draw.line_height(face)
    labels = [
        [_draw.fit(line, face, thumb_px) for line in tile.label.splitlines()[:_MAX_LABEL_LINES]] for tile in tiles
    ]
    label_px = step * max((len(lines) for lines in labels), default=0)
    count = max(1, len(tiles))
    column_count = max(1, min(columns or math.ceil(math.sqrt(count)), count))
    cell_w, cell_h = thumb_px + pad, thumb_px + pad // 2 + label_px + pad
    footer = _sheet_footer(len(tiles), total)
    footer_px = step + pad if footer else 0
    width = pad + column_count * cell_w
    canvas = Image.new("RGB", (width, pad + math.ceil(len(tiles) / column_count) * cell_h + footer_px), _draw.PAGE)
    draw = ImageDraw.Draw(canvas)
    for number, (tile, lines) in enumerate(zip(tiles, labels, strict=True)):
        left, top = pad + (number % column_count) * cell_w, pad + (number // column_count) * cell_h
        _draw.paste_tile(canvas, tile, (left, top), thumb_px)
        _draw.draw_lines(draw, lines, (left, top + thumb_px + pad // 2, thumb_px, label_px), face)
    if footer:
        draw.text(
            (pad, canvas.height - footer_px), _draw.fit(footer, face, width - 2 * pad), fill=_draw.MUTED, font=face
        )
    return canvas


def _sheet_footer(shown: int, total: int) -> str:
    if total == 0:
        return "no images"
    return f"showing the first {shown:,} of {total:,} images" if shown < total else ""


def _xy(
    cell: Callable[[JsonValue, JsonValue], Tile],
    *,
    names: tuple[str, str],
    axes: tuple[Sequence[JsonValue], Sequence[JsonValue]],
    thumb_px: int,
    max_axis_values: int,
) -> Image.Image:
    x_values, y_values = (list(values[:max_axis_values]) for values in axes)
    pad = max(4, thumb_px // 32)
    face, title_face = _draw.font(max(10, thumb_px // 16)), _draw.font(max(12, thumb_px // 12))
    step, title_px = _draw.line_height(face), _draw.line_height(title_face) + pad
    header_px, row_header_px = 2 * step + pad, thumb_px * 3 // 4
    left, top, cell_px = pad + title_px + row_header_px + pad, pad + title_px + header_px, thumb_px + pad
    footer = _xy_footer(axes, (len(x_values), len(y_values)))
    footer_px = step + pad if footer else 0
    width = left + max(1, len(x_values)) * cell_px
    canvas = Image.new("RGB", (width, top + max(1, len(y_values)) * cell_px + footer_px), _draw.PAGE)
    draw = ImageDraw.Draw(canvas)
    grid_w, grid_h = len(x_values) * cell_px - pad, len(y_values) * cell_px - pad
    x_title = _draw.fit(names[0], title_face, max(grid_w, thumb_px))
    draw.text((left + (grid_w - title_face.getlength(x_title)) / 2, pad), x_title, fill=_draw.INK, font=title_face)
    y_title = _draw.vertical_text(names[1], title_face, max(grid_h, thumb_px))
    canvas.paste(y_title, (pad, top), y_title)
    for column, x in enumerate(x_values):
        lines = _draw.wrap(_value_text(x), face, thumb_px, max_lines=2)
        _draw.draw_lines(
            draw, lines, (left + column * cell_px, pad + title_px, thumb_px, header_px), face, muted_after=2
        )
    for row, y in enumerate(y_values):
        lines = _draw.wrap(_value_text(y), face, row_header_px, max_lines=max(1, thumb_px // step))
        middle = top + row * cell_px + (thumb_px - len(lines) * step) // 2
        _draw.draw_lines(draw, lines, (pad + title_px, middle, row_header_px, thumb_px), face, muted_after=len(lines))
        for column, x in enumerate(x_values):
            _draw.paste_tile(canvas, cell(x, y), (left + column * cell_px, top + row * cell_px), thumb_px)
    if footer:
        draw.text(
            (pad, canvas.height - footer_px), _draw.fit(footer, face, width - 2 * pad), fill=_draw.MUTED, font=face
        )
    return canvas


def _xy_footer(axes: tuple[Sequence[JsonValue], Sequence[JsonValue]], shown: tuple[int, int]) -> str:
    if all(len(values) == count for values, count in zip(axes, shown, strict=True)):
        return ""
    return f"showing {shown[0]} of {len(axes[0])} columns and {shown[1]} of {len(axes[1])} rows"


def _batch_xy_grid(
    store: OutputStore, ordered: Sequence[JobResult], *, x_name: str, y_name: str, thumb_px: int,
    thumbnails: Thumbnails | None,
) -> Image.Image:  # fmt: skip
    """The XY grid of a batch: per cell the first job with an image, else the first job's placeholder."""
    axes: tuple[dict[str, JsonValue], dict[str, JsonValue]] = ({}, {})  # canonical text -> value, in sweep order
    cells: dict[tuple[str, str], tuple[bool, JobResult]] = {}
    for result in ordered:
        values = result.job.values
        if x_name not in values or y_name not in values:
            continue
        key = (_canonical(values[x_name]), _canonical(values[y_name]))
        axes[0].setdefault(key[0], values[x_name])
        axes[1].setdefault(key[1], values[y_name])
        has_image = _first_image(result) is not None
        if key not in cells or (has_image and not cells[key][0]):
            cells[key] = (has_image, result)
    missing = Tile(_draw.given(None))

    def cell(x: JsonValue, y: JsonValue) -> Tile:
        found = cells.get((_canonical(x), _canonical(y)))
        return missing if found is None else _job_tile(store, found[1], thumbnails)

    return _xy(
        cell,
        names=(x_name, y_name),
        axes=(list(axes[0].values()), list(axes[1].values())),
        thumb_px=thumb_px,
        max_axis_values=MAX_AXIS_VALUES,
    )


def _job_tile(store: OutputStore, result: JobResult, thumbnails: Thumbnails | None = None) -> Tile:
    job = result.job
    seed = "no seed" if job.seed is None else f"seed {job.seed}"
    label = f"#{job.index + 1}  {seed}\n{job.label or 'item'}"  # numbered from 1, as the page and task runs
    uri = _first_image(result)
    if uri is None:
        return Tile(_draw.given(None), label, placeholder="no image" if result.status == "done" else result.status)
    if thumbnails is not None and (made := thumbnails.tile(uri)) is not None:
        return Tile(_draw.given(made), label)
    return Tile(lambda: _read(store, uri), label, placeholder="missing")


def _first_image(result: JobResult) -> str | None:
    """The first output Pillow can draw (an animated one shows its first frame); videos and sounds are skipped."""
    drawable = (
        file.uri for file in result.files if file.media == "images" and media_type_of(file.uri).startswith("image/")
    )
    return next(drawable, None)


def _read(store: OutputStore, uri: str) -> TileImage:
    """The stored image at `uri` (a local path where possible, so Pillow reads it lazily), or None."""
    relpath = store.relpath_of(uri)
    if relpath is None:
        return None
    try:
        return store.local_path(relpath) or store.read_bytes(relpath)
    except StorageError:
        return None


def _value_text(value: JsonValue) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _canonical(value: JsonValue) -> str:
    """A hashable key for any JSON value: lists and dicts cannot be dict keys, and `1` must differ from `true`."""
    return json.dumps(value, sort_keys=True)


def _png(image: Image.Image, *, close: bool = True) -> bytes:
    buffer = io.BytesIO()
    # The fastest zlib level: a 400-tile sheet encodes in 2/3 of the default's time, and it is written as the
    # batch's last step.
    image.save(buffer, format="PNG", compress_level=1)
    if close:
        image.close()
    return buffer.getvalue()


def _preview_data_uri(sheet: Image.Image, *, max_px: int) -> str:
    # A box-filter reduction first, to about twice the size wanted: a third of the time of thumbnailing it all.
    factor = max(1, max(sheet.size) // (2 * max_px))
    preview = (sheet.reduce(factor) if factor > 1 else sheet.copy()).convert("RGB")
    preview.thumbnail((max_px, max_px))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=75)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
