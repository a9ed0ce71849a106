"""What every workflow module reads the same way: links, node order, and workflow JSON text.

The one home of these rules; `parameters`, `workflow`, `convert`, `preflight`, `rejection` and
`intake` import them, so a change here changes them all.
"""

import json
from collections.abc import Mapping
from typing import Any

from comfybatch.errors import WorkflowFormatError


def is_link(value: Any) -> bool:
    """Whether an input value is a link `["<node_id>", <output_index>]`."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and is_int(value[1])


def is_int(value: Any) -> bool:
    """Whether `value` is an int and not a bool (JSON `true` is not an index)."""
    return isinstance(value, int) and not isinstance(value, bool)


def node_sort_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Order node ids numerically, subgraph ids (`"5:3"`) after their parent and `"5:9"` before `"5:10"`.

    Ids that are not numbers (and the graph-wide `"-"`) come after the numbered ones.
    """
    return tuple((0, int(part)) if part.isascii() and part.isdigit() else (1, part) for part in node_id.split(":"))


def parse_json(text: str | bytes) -> Any:
    """Decode workflow JSON text (UTF-8, a BOM allowed).

    Raises:
        WorkflowFormatError: not UTF-8, or not JSON; the message gives the position.
    """
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError(f"workflow is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"workflow is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        ) from exc


def describe_json(data: Any) -> str:
    """A few words naming what a JSON value is, for messages (`"a JSON array of 3 items"`)."""
    if isinstance(data, Mapping):
        if not data:
            return "an empty JSON object"
        keys = ", ".join(repr(str(k)) for k in list(data)[:5])
        return f"a JSON object with keys {keys}{', …' if len(data) > 5 else ''}"
    if isinstance(data, list):
        return f"a JSON array of {len(data)} items"
    if isinstance(data, str):
        return "a JSON string"
    if isinstance(data, bool):
        return "a JSON boolean"
    if isinstance(data, int | float):
        return "a JSON number"
    return "null" if data is None else f"a {type(data).__name__}"
