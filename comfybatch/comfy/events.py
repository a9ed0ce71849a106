"""Decode ComfyUI WebSocket frames (JSON and binary) into typed events."""

import json
import struct
from typing import Any

from pydantic import BaseModel, ConfigDict

from comfybatch.comfy.protocol import OutputFile, list_output_files

# Terminal messages for one prompt (comfyui-protocol.md §2.3); `executing` with node null also ends it.
TERMINAL_TYPES = frozenset({"execution_success", "execution_error", "execution_interrupted"})
PREVIEW_TYPE = "preview"
_PREVIEW_IMAGE, _TEXT, _PREVIEW_WITH_METADATA = 1, 3, 4
_IMAGE_FORMATS = {1: "image/jpeg", 2: "image/png"}


class ComfyEvent(BaseModel):
    """One message from the server; `data` is kept as sent (unknown keys tolerated)."""

    model_config = ConfigDict(frozen=True)

    type: str
    data: dict[str, Any]
    image: bytes | None = None  # binary previews only

    @property
    def prompt_id(self) -> str | None:
        value = self.data.get("prompt_id")
        return value if isinstance(value, str) else None

    @property
    def node(self) -> str | None:
        value = self.data.get("node", self.data.get("node_id"))
        return None if value is None else str(value)

    @property
    def is_terminal(self) -> bool:
        """True once the prompt has ended, whatever the outcome."""
        return self.type in TERMINAL_TYPES or (self.type == "executing" and self.data.get("node") is None)

    @property
    def shows_start(self) -> bool:
        """True for messages only sent once the prompt has left the queue."""
        return self.type in {"execution_start", "execution_cached", "executing", "progress", "progress_state"}

    @property
    def progress(self) -> tuple[int, int] | None:
        """`(value, max)` for a `progress` event."""
        if self.type != "progress":
            return None
        value, maximum = self.data.get("value"), self.data.get("max")
        return (value, maximum) if isinstance(value, int) and isinstance(maximum, int) else None

    def output_files(self) -> list[OutputFile]:
        """Files an `executed` event announces."""
        output = self.data.get("output")
        if self.type != "executed" or not isinstance(output, dict) or self.node is None:
            return []
        return list_output_files({self.node: output})


def parse_frame(frame: str | bytes) -> ComfyEvent | None:
    """Decode one frame; None for anything not understood (never raises)."""
    if isinstance(frame, bytes):
        return _parse_binary(frame)
    try:
        message = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        return None
    data = message.get("data")
    return ComfyEvent(type=message["type"], data=data if isinstance(data, dict) else {})


def _parse_binary(frame: bytes) -> ComfyEvent | None:
    # server.py encode_bytes: big-endian uint32 event type, then a type-specific body.
    if len(frame) < 8:
        return None
    (kind,) = struct.unpack(">I", frame[:4])
    if kind == _PREVIEW_IMAGE:
        (image_format,) = struct.unpack(">I", frame[4:8])
        return ComfyEvent(type=PREVIEW_TYPE, data={"mime": _IMAGE_FORMATS.get(image_format, "")}, image=frame[8:])
    if kind == _PREVIEW_WITH_METADATA:
        (length,) = struct.unpack(">I", frame[4:8])
        try:
            metadata = json.loads(frame[8 : 8 + length])
        except ValueError:
            return None
        if not isinstance(metadata, dict):
            return None
        mime = metadata.get("image_type", "")
        return ComfyEvent(type=PREVIEW_TYPE, data={**metadata, "mime": mime}, image=frame[8 + length :])
    if kind == _TEXT:
        (length,) = struct.unpack(">I", frame[4:8])
        node_id = frame[8 : 8 + length].decode("utf-8", "replace")
        return ComfyEvent(type="text", data={"node": node_id, "text": frame[8 + length :].decode("utf-8", "replace")})
    return None
