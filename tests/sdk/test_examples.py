"""`examples/*.py` run as users run them (`--tiny`: the demo checkpoint) against the live dashboard."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.dashboard.conftest import API_KEY

pytestmark = pytest.mark.timeout(300)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# script -> (output folder, images it downloads, exact sizes it asks for)
EXPECTED = {
    "picture_book.py": ("picture-book", 8, {(64, 64)}),
    "product_catalogue.py": ("catalogue", 8, {(64, 64)}),
    "social_posts.py": ("social", 6, {(64, 64), (63, 112), (120, 63)}),
}


def _size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        return image.size


def test_examples_render_and_download(live_dashboard: str, tmp_path: Path) -> None:
    """Each example script exits 0 and leaves its PNGs, at the sizes it asked for, plus a manifest."""
    env = {**os.environ, "COMFYBATCH_URL": live_dashboard, "COMFYBATCH_API_KEY": API_KEY}
    runs = {}
    for script in EXPECTED:  # at once: the fleet interleaves their jobs
        (tmp_path / script).mkdir()
        runs[script] = subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), "--tiny"], cwd=tmp_path / script, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    outputs = {script: run.communicate(timeout=240)[0] for script, run in runs.items()}

    for script, (folder, count, sizes) in EXPECTED.items():
        assert runs[script].returncode == 0, f"{script}:\n{outputs[script][-3000:]}"
        (batch_dir,) = (tmp_path / script / folder).iterdir()
        images = sorted(batch_dir.glob("*.png"))
        assert len(images) == count, script
        assert {_size(image) for image in images} == sizes, script
        assert (batch_dir / "manifest.csv").is_file()
