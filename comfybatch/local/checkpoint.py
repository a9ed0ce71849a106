"""Build the tiny random-weight SD1.5 checkpoint once per machine (with ComfyUI's own torch)."""

import hashlib
import subprocess
from pathlib import Path

from comfybatch.local.install import ComfyInstall, cache_root

GENERATOR = Path(__file__).with_name("tiny_checkpoint.py")
TINY_CHECKPOINT = "comfybatch-tiny-sd15.ckpt"  # the name workflows put in `ckpt_name`


def ensure_tiny_checkpoint(install: ComfyInstall) -> Path:
    """Path of the cached checkpoint; rebuilt only when the generator changes."""
    version = hashlib.sha256(GENERATOR.read_bytes()).hexdigest()[:12]
    path = cache_root() / "checkpoints" / version / TINY_CHECKPOINT
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"partial-{path.name}")
    completed = subprocess.run(
        [str(install.python), str(GENERATOR), str(partial)], capture_output=True, text=True, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(f"tiny checkpoint generator failed:\n{completed.stdout}\n{completed.stderr}")
    partial.replace(path)
    return path
