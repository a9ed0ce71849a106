"""`examples/product_photos.py` run as a user runs it (`--tiny`) against the live dashboard."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.dashboard.conftest import API_KEY

pytestmark = pytest.mark.timeout(300)
SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "product_photos.py"


def test_product_photos_keeps_each_product_and_repaints_its_background(live_dashboard: str, tmp_path: Path) -> None:
    """Three drawn cutouts x two scenes: six downloads, each with its own product's pixels exactly where the cutout
    is opaque, and a repainted background where it is transparent."""
    env = {**os.environ, "COMFYBATCH_URL": live_dashboard, "COMFYBATCH_API_KEY": API_KEY}

    run = subprocess.run([sys.executable, str(SCRIPT), "--tiny"], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=240, check=False)  # fmt: skip

    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    (batch_dir,) = (tmp_path / "product-photos").iterdir()
    outputs = sorted(batch_dir.glob("*.png"))
    cutouts = sorted((tmp_path / "photos").glob("*.png"))
    assert len(outputs) == 6
    assert (batch_dir / "manifest.csv").is_file()
    for output in outputs:
        # Items are image-major: two scenes per photo, photos in name order.
        cutout = cutouts[(int(output.name[:5]) - 1) // 2]  # files are numbered from 1
        with Image.open(cutout) as source, Image.open(output) as result:
            alpha, colour, pixels = source.getchannel("A"), source.convert("RGB"), result.convert("RGB")
            opaque = [(x, y) for x in range(64) for y in range(64) if alpha.getpixel((x, y)) == 255]
            clear = [(x, y) for x in range(64) for y in range(64) if alpha.getpixel((x, y)) == 0]
            assert {pixels.getpixel(xy) for xy in opaque} == {colour.getpixel(opaque[0])}, output.name
            assert {pixels.getpixel(xy) for xy in clear} != {colour.getpixel(clear[0])}, output.name
