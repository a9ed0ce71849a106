"""Workflows as users hand them over: decode the JSON, detect UI or API format, load either as `ApiWorkflow`.

Sits above `workflow` (the API graph) and `convert` (UI to API), so neither imports the other's caller.
"""

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from comfybatch.comfy.convert import ui_to_api
from comfybatch.comfy.graph import describe_json, parse_json
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import WorkflowFormatError

WorkflowFormat = Literal["api", "ui"]


def detect_format(data: Any) -> WorkflowFormat:
    """`"ui"` for an editor save (`nodes` list), `"api"` for a graph of `class_type` nodes.

    Raises:
        WorkflowFormatError: neither; the message says what was found.
    """
    if isinstance(data, Mapping):
        if isinstance(data.get("nodes"), list):
            return "ui"
        values = list(data.values())
        nodes_like = values and all(isinstance(v, Mapping) for v in values)
        if nodes_like and any("class_type" in v or "inputs" in v for v in values):
            return "api"
        if isinstance(data.get("prompt"), Mapping):
            raise WorkflowFormatError(
                "expected a workflow, found an object with a 'prompt' key (a /prompt request body?); "
                "pass its 'prompt' value instead"
            )
    raise WorkflowFormatError(
        f"expected a ComfyUI workflow (API format: nodes with class_type; UI format: a 'nodes' list), "
        f"found {describe_json(data)}"
    )


def load_workflow(raw: str | bytes | Mapping[str, Any] | Path, object_info: ObjectInfo | None = None) -> ApiWorkflow:
    """Load a workflow in either format; UI format is converted for the server `object_info` describes.

    `raw` is JSON text or bytes, a decoded dict, or a `Path`; a `str` that does not start with
    `{`/`[` and names an existing file (or ends in `.json`) is read as a path.

    Raises:
        WorkflowFormatError: unreadable, not JSON, not a workflow, UI format without
            `object_info`, or not convertible.
    """
    data = decode_workflow(raw)
    if detect_format(data) == "api":
        return ApiWorkflow(data)
    if object_info is None:
        raise WorkflowFormatError(
            "this is a UI-format workflow (as saved by the ComfyUI editor); converting it needs the target "
            "server's node definitions: connect to a server or pass an object_info JSON file "
            "(or re-export the workflow with 'Export (API)')"
        )
    return ui_to_api(data, object_info)


def decode_workflow(raw: str | bytes | Mapping[str, Any] | Path) -> Any:
    """The JSON data of a workflow given as `load_workflow` takes it, not yet checked to be a graph.

    Raises:
        WorkflowFormatError: unreadable file, not UTF-8, not JSON.
    """
    if isinstance(raw, Mapping):
        return raw
    if isinstance(raw, str) and not raw.lstrip().startswith(("{", "[")) and (raw.endswith(".json") or _is_file(raw)):
        raw = Path(raw)
    if isinstance(raw, Path):
        try:
            raw = raw.read_bytes()
        except OSError as exc:
            raise WorkflowFormatError(f"cannot read workflow file {str(raw)!r}: {exc.strerror or exc}") from exc
    return parse_json(raw)


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):
        return False
