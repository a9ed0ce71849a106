"""Build batch request bodies (`BatchSpec` as JSON) from the SDK's keyword arguments."""

import json
import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from comfybatch.errors import BatchRequestError, RequestProblem

DEFAULT_WORKFLOW = "txt2img-tiny"  # the demo template every comfybatch install serves
SHEET_MEDIA = {
    ".csv": "text/csv",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".parquet": "application/vnd.apache.parquet",
}
IMAGE_MEDIA = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
ZIP_MEDIA = {".zip": "application/zip"}  # of input images
_NOT_SLUG = re.compile(r"[^a-z0-9]+")
_NOT_UPLOAD_NAME = re.compile(r"[^A-Za-z0-9._ -]+")

Workflow = str | Mapping[str, Any] | os.PathLike[str]
SheetSource = str | os.PathLike[str]


def batch_name_for(prompts: Sequence[str], sheet: SheetSource | None) -> str:
    """A fresh batch name from the first prompt or the sheet's name, e.g. `a-red-fox-7f3a9c`.

    The random suffix matters: a batch's name is its output folder, and finished jobs there are skipped.
    """
    source = prompts[0] if prompts else Path(sheet).stem if sheet is not None else "batch"
    slug = _NOT_SLUG.sub("-", source.lower()).strip("-")[:40].strip("-") or "batch"
    return f"{slug}-{secrets.token_hex(3)}"


def workflow_value(workflow: Workflow) -> str | dict[str, Any]:
    """A template name as is; a local workflow file read and sent inline (the API refuses server-side paths)."""
    if isinstance(workflow, os.PathLike):
        try:
            graph = json.loads(Path(workflow).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BatchRequestError(f"cannot read workflow file {os.fspath(workflow)!r}: {exc}") from exc
        if not isinstance(graph, dict):
            raise BatchRequestError(f"workflow file {os.fspath(workflow)!r} does not hold a graph (a JSON object)")
        return graph
    return workflow if isinstance(workflow, str) else dict(workflow)


def local_sheet(sheet: SheetSource) -> Path | None:
    """The local file to upload for `sheet`, or None when it is the `sheet` of an earlier upload.

    Raises:
        BatchRequestError: a path object naming no file.
    """
    path = Path(sheet)
    if path.is_file():
        return path
    if isinstance(sheet, os.PathLike):
        raise BatchRequestError("no such sheet", problems=(RequestProblem(f"{path} is not a file", field="sheet"),))
    return None


def upload_name(path: Path) -> tuple[str, str]:
    """The file name the upload route accepts, and the content type for its suffix.

    Raises:
        BatchRequestError: not a sheet (.csv, .xlsx, .parquet), an image (.png, .jpg, .jpeg, .webp) or a .zip.
    """
    suffix = path.suffix.lower()
    media = {**SHEET_MEDIA, **IMAGE_MEDIA, **ZIP_MEDIA}
    if suffix not in media:
        message = (f"{path.name}: a sheet is a .csv, .xlsx or .parquet file, an image a .png, .jpg, .jpeg or .webp "
                   "file, or a .zip of images")  # fmt: skip
        raise BatchRequestError("unsupported upload", problems=(RequestProblem(message, field="sheet"),))
    stem = _NOT_UPLOAD_NAME.sub("_", path.stem).lstrip("._ -")[:90] or "upload"
    return f"{stem}{suffix}", media[suffix]


def batch_body(
    *, name: str, workflow: Workflow, prompts: Sequence[str], sheet: str | None, width: int | None,
    height: int | None, fields: Mapping[str, Any], params: Mapping[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """The `BatchSpec` JSON: `fields` are BatchSpec fields left unset when None; `params` become `defaults`."""
    defaults = {**params, **{k: v for k, v in (("width", width), ("height", height)) if v is not None}}
    body: dict[str, Any] = {"name": name, "workflow": workflow_value(workflow), "prompts": list(prompts)}
    if sheet is not None:
        body["sheet"] = sheet
    if defaults:
        body["defaults"] = defaults
    body.update({key: value for key, value in fields.items() if value is not None})
    return body
