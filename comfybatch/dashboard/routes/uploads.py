"""`PUT /api/uploads/{filename}`: store a sheet (CSV, XLSX, Parquet), an input image, or a zip of input images for a
batch request to name."""

import asyncio
import hashlib
import io
import re
import zipfile
from pathlib import PurePosixPath

from fastapi import APIRouter, HTTPException, Request, status

from comfybatch.dashboard.body import read_limited
from comfybatch.dashboard.deps import KeyName, SettingsDep
from comfybatch.dashboard.requests import UPLOADS
from comfybatch.dashboard.schemas import Uploaded
from comfybatch.errors import BatchRequestError, RequestProblem
from comfybatch.inputs import InputPolicy, inspect_image
from comfybatch.outputs.storage import OutputStore
from comfybatch.sheets import read_sheet
from comfybatch.values import InvalidValue

router = APIRouter(prefix="/api/uploads", tags=["uploads"])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ -]{0,100}\.(csv|xlsx|parquet|png|jpg|jpeg|webp|zip)$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]")
_BINARY = "application/octet-stream"
_MEDIA: dict[str, frozenset[str]] = {
    "csv": frozenset({"text/csv", "text/plain", "application/csv", _BINARY}),
    "xlsx": frozenset({"application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", _BINARY}),
    "parquet": frozenset({"application/vnd.apache.parquet", "application/x-parquet", _BINARY}),
    "png": frozenset({"image/png", _BINARY}),
    "jpg": frozenset({"image/jpeg", _BINARY}),
    "jpeg": frozenset({"image/jpeg", _BINARY}),
    "webp": frozenset({"image/webp", _BINARY}),
    "zip": frozenset({"application/zip", "application/x-zip-compressed", _BINARY}),
}
_ZIP_IMAGES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
MAX_ZIP_IMAGES = 1000
# Photos barely compress: a zip that inflates far beyond its own size is a zip bomb, not a folder of images.
MAX_ZIP_INFLATION = 10
_SHEETS = frozenset({"csv", "xlsx", "parquet"})


@router.put("/{filename}", status_code=status.HTTP_201_CREATED)
async def upload_sheet(filename: str, request: Request, settings: SettingsDep, _key: KeyName) -> Uploaded:
    """Store the body as a sheet (its `sheet` goes into `POST /api/batches`), an input image (its `image` goes
    into `images`) or a zip of input images (its `images`), checked to read before anything is kept."""
    match = _NAME.match(filename)
    if match is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            "filename: letters, digits, '.', '_', '-' and spaces, ending in .csv, .xlsx, .parquet, .png, .jpg, .jpeg, "
            ".webp or .zip (of images)",
        )
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in _MEDIA[match.group(1)]:
        raise HTTPException(status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                            f"content-type {media or '(none)'!r} does not fit a .{match.group(1)} file; "
                            f"send one of {', '.join(sorted(_MEDIA[match.group(1)]))}")  # fmt: skip
    data = await read_limited(request.stream(), request.headers, limit=settings.max_upload_bytes, what="an upload")
    store = OutputStore(settings.output_root)
    relpath = f"{UPLOADS}/{hashlib.sha256(data).hexdigest()[:16]}-{filename.replace(' ', '_')}"
    if match.group(1) == "zip":
        policy = InputPolicy.from_settings(settings)
        images = await asyncio.to_thread(
            _store_zip, data, store, policy, max_inflated_bytes=len(data) * MAX_ZIP_INFLATION
        )
        return Uploaded(images=images)
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


def _store_zip(data: bytes, store: OutputStore, policy: InputPolicy, *, max_inflated_bytes: int) -> list[str]:
    """Check every image of the zip, then store each as `.uploads/<sha16>-<name>`; their URIs in name order.

    Raises:
        BatchRequestError naming each member that is not a usable image (nothing is stored then).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _refused("the body is not a zip archive") from None
    with archive:
        members = _zip_images(archive)
        if not members:
            raise _refused(f"the zip holds no image files ({', '.join(sorted(_ZIP_IMAGES))})")
        if len(members) > MAX_ZIP_IMAGES:
            raise _refused(f"the zip holds {len(members):,} images; at most {MAX_ZIP_IMAGES:,} per upload")
        checked, problems, inflated = [], [], 0
        for member in members:  # all checked before any is kept
            try:
                content = _member_bytes(archive, member, policy)
                inflated += len(content)
                if inflated > max_inflated_bytes:
                    raise _refused(f"the zip inflates to more than {MAX_ZIP_INFLATION}x its size (a zip bomb?)")
                checked.append((member, inspect_image(member.filename, content, policy).sha256))
            except InvalidValue as exc:
                problems.append(RequestProblem(str(exc), field="body"))
        if problems:
            raise BatchRequestError("the zip holds files that are not usable images", problems=tuple(problems))
        uris = []
        for member, sha256 in checked:
            name = _NOT_NAME.sub("_", PurePosixPath(member.filename).name)[-100:]
            uris.append(store.write_bytes(f"{UPLOADS}/{sha256[:16]}-{name}", _member_bytes(archive, member, policy)))
    return uris


def _zip_images(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """The image files of a zip in name order: folders flattened; hidden files and macOS resource forks skipped."""
    return sorted(
        (info for info in archive.infolist() if not info.is_dir()
         and not any(part.startswith(".") or part == "__MACOSX" for part in PurePosixPath(info.filename).parts)
         and PurePosixPath(info.filename).suffix.lower() in _ZIP_IMAGES),
        key=lambda info: info.filename,
    )  # fmt: skip


def _member_bytes(archive: zipfile.ZipFile, member: zipfile.ZipInfo, policy: InputPolicy) -> bytes:
    """A member's content, read no further than the input size limit whatever its header claims.

    Raises:
        InvalidValue naming the member.
    """
    try:
        with archive.open(member) as file:
            content = file.read(policy.max_bytes + 1)
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError, EOFError) as exc:  # corrupt, encrypted
        raise InvalidValue(f"{member.filename}: cannot be extracted ({exc})") from None
    if len(content) > policy.max_bytes:
        raise InvalidValue(f"{member.filename}: larger than {policy.max_bytes:,} bytes")
    return content


def _refused(message: str) -> BatchRequestError:
    return BatchRequestError(message, problems=(RequestProblem(message, field="body"),))
