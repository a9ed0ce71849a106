"""Decoding WebSocket frames: JSON events and binary previews, never raising."""

import json
import struct

from comfybatch.comfy.events import PREVIEW_TYPE, parse_frame


def test_parse_frame_executing_null_is_terminal() -> None:
    """`executing` with node null ends the prompt."""
    event = parse_frame(json.dumps({"type": "executing", "data": {"node": None, "prompt_id": "p"}}))

    assert event is not None
    assert event.is_terminal
    assert event.prompt_id == "p"


def test_parse_frame_executing_a_node_is_not_terminal() -> None:
    """`executing` of a node marks the prompt started but not ended."""
    event = parse_frame(json.dumps({"type": "executing", "data": {"node": "3", "prompt_id": "p"}}))

    assert event is not None
    assert not event.is_terminal
    assert event.shows_start
    assert event.node == "3"


def test_parse_frame_tolerates_unknown_types_and_keys() -> None:
    """Unknown message types and extra keys parse into events instead of failing."""
    event = parse_frame(json.dumps({"type": "crystools.monitor", "data": {"cpu": 3}, "extra": 1}))

    assert event is not None
    assert event.type == "crystools.monitor"
    assert not event.is_terminal


def test_parse_frame_garbage_is_none() -> None:
    """Non-JSON text, JSON without a type, and short binary frames are skipped."""
    assert [parse_frame("{nope"), parse_frame("[1, 2]"), parse_frame(b"\x00\x00")] == [None, None, None]


def test_parse_frame_binary_preview_image() -> None:
    """Event type 1: uint32 format (2 = PNG) then the image bytes."""
    event = parse_frame(struct.pack(">II", 1, 2) + b"\x89PNG...")

    assert event is not None
    assert event.type == PREVIEW_TYPE
    assert event.image == b"\x89PNG..."
    assert event.data["mime"] == "image/png"


def test_parse_frame_binary_preview_with_metadata_carries_prompt_id() -> None:
    """Event type 4: uint32 length, JSON metadata naming the prompt, then the image."""
    metadata = json.dumps({"node_id": "5", "prompt_id": "p1", "image_type": "image/jpeg"}).encode()
    event = parse_frame(struct.pack(">II", 4, len(metadata)) + metadata + b"JPEGDATA")

    assert event is not None
    assert event.prompt_id == "p1"
    assert event.image == b"JPEGDATA"


def test_parse_frame_executed_lists_output_files() -> None:
    """`executed` outputs of any media key become OutputFiles for that node."""
    frame = {"type": "executed", "data": {"node": "9", "prompt_id": "p", "output": {
        "images": [{"filename": "a.png", "subfolder": "s", "type": "output"}],
        "gifs": [{"filename": "b.gif", "subfolder": "", "type": "output"}], "text": ["not a file"]}}}  # fmt: skip
    event = parse_frame(json.dumps(frame))

    assert event is not None
    assert [(f.node_id, f.media, f.filename) for f in event.output_files()] == [
        ("9", "images", "a.png"),
        ("9", "gifs", "b.gif"),
    ]
