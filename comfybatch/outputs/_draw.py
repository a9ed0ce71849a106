"""Pillow drawing helpers for contact sheets: fonts, fitted text, thumbnails and placeholders."""

import functools
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

TileImage = bytes | Path | Image.Image | None  # an Image: a thumbnail `shrink` made
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
Color = tuple[int, int, int]

PAGE: Color = (250, 250, 250)
BOX: Color = (214, 214, 214)  # letterbox behind thumbnails: neutral grey
INK: Color = (32, 32, 32)
MUTED: Color = (112, 112, 112)
ALERT: Color = (176, 36, 36)
ELLIPSIS = "…"


@dataclass(frozen=True)
class Tile:
    """One cell: `load` gives the image (called once, when drawn); `placeholder` is shown if it gives None."""

    load: Callable[[], TileImage]
    label: str = ""
    placeholder: str = "missing"


def given(image: TileImage) -> Callable[[], TileImage]:
    """A `Tile.load` for an image already at hand."""
    return lambda: image


@functools.lru_cache(maxsize=16)
def font(size: int) -> Font:
    """Pillow's bundled font at `size` px (a fixed bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size=size)


def line_height(face: Font) -> int:
    """Pixels from one text line to the next."""
    top, bottom = face.getbbox("Ag|")[1::2]
    return int(bottom) + max(2, int(bottom - top) // 4)


def fit(text: str, face: Font, width: int) -> str:
    """`text` shortened with an ellipsis until it is at most `width` px wide."""
    if face.getlength(text) <= width:
        return text
    low, high = 0, len(text)  # longest prefix that fits, by bisection: labels can be long prompts
    while low < high:
        middle = (low + high + 1) // 2
        if face.getlength(text[:middle].rstrip() + ELLIPSIS) <= width:
            low = middle
        else:
            high = middle - 1
    return text[:low].rstrip() + ELLIPSIS if low else ""


def wrap(text: str, face: Font, width: int, max_lines: int) -> list[str]:
    """`text` word-wrapped into at most `max_lines` lines of `width` px; the last one ellipsized."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        count = 1
        while count < len(words) and face.getlength(" ".join(words[: count + 1])) <= width:
            count += 1
        if len(lines) == max_lines - 1:
            count = len(words)  # the last line takes the rest and is cut by `fit`
        lines.append(fit(" ".join(words[:count]), face, width))
        words = words[count:]
    return lines


def draw_lines(
    draw: ImageDraw.ImageDraw, lines: list[str], box: tuple[int, int, int, int], face: Font, *, muted_after: int = 1
) -> None:
    """Draw `lines` centred horizontally in `box` (left, top, width, height), from its top.

    Lines from number `muted_after` on are grey: a label's detail under its title.
    """
    left, top, width, _ = box
    step = line_height(face)
    for number, line in enumerate(lines):
        x = left + (width - face.getlength(line)) / 2
        draw.text((x, top + number * step), line, fill=INK if number < muted_after else MUTED, font=face)


def paste_tile(canvas: Image.Image, tile: Tile, origin: tuple[int, int], size: int) -> None:
    """Draw `tile` as a `size` px square at `origin`: the letterboxed thumbnail or a placeholder."""
    source = tile.load()
    shrunk, problem = (None, tile.placeholder) if source is None else shrink(source, size)
    box = Image.new("RGB", (size, size), BOX)
    if shrunk is not None:
        thumb = _filling(shrunk, size)
        box.paste(thumb, ((size - thumb.width) // 2, (size - thumb.height) // 2))
        thumb.close()
    else:
        _placeholder(box, problem)
    canvas.paste(box, origin)


def shrink(source: bytes | Path | Image.Image, size: int) -> tuple[Image.Image | None, str]:
    """An RGB thumbnail within `size` x `size` (aspect kept, transparency on the letterbox colour), or None and why:
    missing or unreadable. An image given is taken as one this made already."""
    if isinstance(source, Image.Image):
        return source.copy(), ""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.draft("RGB", (size, size))  # JPEG: decode at reduced scale, cheaper for big renders
            image.thumbnail((size, size), Image.Resampling.LANCZOS)
            rgba = image.convert("RGBA")
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError, Image.DecompressionBombError):
        return None, "unreadable"
    flat = Image.new("RGB", rgba.size, BOX)
    flat.paste(rgba, mask=rgba.getchannel("A"))  # transparent parts show the letterbox colour
    return flat, ""


def _filling(thumb: Image.Image, size: int) -> Image.Image:
    """Small renders (previews, tests) fill the tile, their pixels kept sharp; others as they are."""
    if max(thumb.size) * 2 > size:
        return thumb
    factor = size // max(thumb.size)
    with thumb:
        return thumb.resize((thumb.width * factor, thumb.height * factor), Image.Resampling.NEAREST)


def _placeholder(box: Image.Image, text: str) -> None:
    draw = ImageDraw.Draw(box)
    size = box.width
    inset = size // 8
    draw.rectangle((inset, inset, size - inset, size - inset), outline=MUTED, width=max(1, size // 128))
    draw.line((inset, inset, size - inset, size - inset), fill=PAGE, width=max(1, size // 64))
    draw.line((inset, size - inset, size - inset, inset), fill=PAGE, width=max(1, size // 64))
    face = font(max(10, size // 8))
    label = fit(text, face, size - 2 * inset)
    x, y = (size - face.getlength(label)) / 2, (size - line_height(face)) / 2
    draw.rectangle((x - 4, y - 2, x + face.getlength(label) + 4, y + line_height(face)), fill=BOX)
    draw.text((x, y), label, fill=ALERT, font=face)


def vertical_text(text: str, face: Font, length: int) -> Image.Image:
    """`text` fitted to `length` px, drawn bottom-to-top on a transparent strip."""
    label = fit(text, face, length)
    strip = Image.new("RGBA", (length, line_height(face)), (0, 0, 0, 0))
    ImageDraw.Draw(strip).text(((length - face.getlength(label)) / 2, 0), label, fill=INK, font=face)
    return strip.rotate(90, expand=True)
