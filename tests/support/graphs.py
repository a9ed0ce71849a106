"""API-format graphs for tests: weight-free core nodes plus the comfybatch test nodes."""

import uuid
from pathlib import Path
from typing import Any

import comfybatch

TINY_TXT2IMG = Path(comfybatch.__file__).parent / "templates" / "txt2img-tiny.json"

Graph = dict[str, dict[str, Any]]


def unique(label: str) -> str:
    """A per-test filename prefix: identical prompts are cache hits that write no file."""
    return f"tests/{label}-{uuid.uuid4().hex[:8]}"


def solid(prefix: str, *, width: int = 32, height: int = 24, color: int = 0x3366CC) -> Graph:
    """EmptyImage -> ImageInvert -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def through(node: str, prefix: str, **inputs: Any) -> Graph:
    """EmptyImage -> <test node> -> SaveImage, with a fresh nonce."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": node, "inputs": {"image": ["1", 0], "nonce": uuid.uuid4().hex, **inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def delay(seconds: float, prefix: str) -> Graph:
    return through("ComfybatchDelay", prefix, seconds=seconds)


def fail(message: str, prefix: str) -> Graph:
    return through("ComfybatchFail", prefix, message=message)


def hang(seconds: float, prefix: str, *, report_progress: bool) -> Graph:
    return through("ComfybatchHang", prefix, seconds=seconds, report_progress=report_progress)


def crash(after_seconds: float, prefix: str) -> Graph:
    return through("ComfybatchCrash", prefix, after_seconds=after_seconds, exit_code=9)


def nonce_of(graph: Graph) -> str:
    return str(graph["2"]["inputs"]["nonce"])


def pixel(path: Path, xy: tuple[int, int] = (0, 0)) -> tuple[int, ...]:
    """The RGB value at `xy` of an image file (closing it again)."""
    from PIL import Image

    with Image.open(path) as image:
        return tuple(image.convert("RGB").getpixel(xy))  # type: ignore[arg-type]


def size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def close_to(actual: tuple[int, ...], expected: tuple[int, ...], *, tolerance: int = 1) -> bool:
    """Pixel equality up to float rounding in ComfyUI's 0..1 tensors."""
    return len(actual) == len(expected) and all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))
