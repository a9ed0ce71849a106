"""Warm-model routing on local servers: more checkpoint names for the tiny checkpoint, and loads counted."""

from pathlib import Path

from comfybatch.local.fleet import LocalComfyServer

# ComfyUI logs this once per checkpoint it reads from disk (comfy/model_base.py), never for a cached loader output.
_LOAD_LINE = "model_type "


def add_checkpoint_names(server: LocalComfyServer, checkpoint: Path, names: list[str]) -> None:
    """Link `checkpoint` under each of `names` in the server's models/checkpoints: to ComfyUI, distinct models."""
    folder = server.base_dir / "models" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if not (link := folder / name).exists():
            link.symlink_to(checkpoint)


def checkpoint_loads(server: LocalComfyServer) -> int:
    """How many checkpoints the server has read from disk since its log began."""
    if not server.log_path.exists():
        return 0
    return sum(line.startswith(_LOAD_LINE) for line in server.log_path.read_text(errors="replace").splitlines())
