"""`PUT /api/uploads/{filename}`: store a sheet (CSV, XLSX, Parquet) or an input image for a batch request to name."""

import asyncio
import hashlib
import re

from fastapi import APIRouter, HTTPException, Request, status

from comfybatch.dashboard.deps import KeyName, SettingsDep
from comfybatch.dashboard.requests import UPLOADS
from comfybatch.dashboard.schemas import Uploaded
from comfybatch.errors import BatchRequestError, RequestProblem
from comfybatch.inputs import InputPolicy, inspect_image
from comfybatch.outputs.storage import OutputStore
from comfybatch.sheets import read_sheet
from comfybatch.values import InvalidValue

router = APIRouter(prefix="/api/uploads", tags=["uploads"])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,100}\.(csv|xlsx|parquet|png|jpg|jpeg|webp)$")
_BINARY = "application/octet-stream"
_MEDIA: dict[str, frozenset[str]] = {
    "csv": frozenset({"text/csv", "text/plain", "application/csv", _BINARY}),
    "xlsx": frozenset({"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", _BINARY}),
    "parquet": frozenset({"application/vnd.apache.parquet", "application/x-parquet", _BINARY}),
    "png": frozenset({"image/png", _BINARY}),
    "jpg": frozenset({"image/jpeg", _BINARY}),
    "jpeg": frozenset({"image/jpeg", _BINARY}),
    "webp": frozenset({"image/webp", _BINARY}),
}
_SHEETS = frozenset({"csv", "xlsx", "parquet"})


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes `limit` (whatever Content-Length claims)."""
    too_large = HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"an upload may have at most {limit} bytes")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


@router.put("/{filename}", status_code=status.HTTP_201_CREATED)
async def upload_sheet(filename: str, request: Request, settings: SettingsDep, _key: KeyName) -> Uploaded:
    """Store the body as a sheet (its `sheet` goes into `POST /api/batches`) or an input image (its `image` goes
    into `images`), checked to read before it is kept."""
    match = _NAME.match(filename)
    if match is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "filename: letters, digits, '.', '_', '-' and spaces, ending in .csv, .xlsx, .parquet, .png, .jpg, .jpeg "
            "or .webp",
        )
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _MEDIA[match.group(1)]:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"content-type {media or '(none)'!r} does not fit a .{match.group(1)} file; "
                            f"send one of {', '.join(sorted(_MEDIA[match.group(1)]))}")  # fmt: skip
    data = await _body(request, settings.max_upload_bytes)
    store = OutputStore(settings.output_root)
    relpath = f"{UPLOADS}/{hashlib.sha256(data).hexdigest()[:16]}-{filename.replace(' ', '_')}"
    if match.group(1) not in _SHEETS:
        try:
            image = inspect_image(filename, data, InputPolicy.from_settings(settings))  # before anything is kept
        except InvalidValue as exc:
            raise BatchRequestError(str(exc), problems=(RequestProblem(str(exc), field="body"),)) from None
        uri = await asyncio.to_thread(store.write_bytes, relpath, data)
        return Uploaded(image=uri, sha256=image.sha256, width=image.width, height=image.height)
    uri = await asyncio.to_thread(store.write_bytes, relpath, data)
    try:
        frame = await asyncio.to_thread(read_sheet, uri)
    except BatchRequestError as exc:
        await asyncio.to_thread(store.delete, relpath)
        raise BatchRequestError(str(exc).replace(uri, filename)) from None  # the client's name, not our path
    return Uploaded(sheet=uri, rows=len(frame), columns=[str(column) for column in frame.columns])
