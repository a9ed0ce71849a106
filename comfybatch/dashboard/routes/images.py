"""`/api/batches/{id}/items/{key}/image`: only files the batch's journal recorded for that item."""

import io
from collections.abc import Iterable
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Response
from PIL import Image

from comfybatch.dashboard.deps import KeyName, LauncherDep
from comfybatch.errors import BatchNotFound, UnsafePath
from comfybatch.models import StoredFile
from comfybatch.outputs.manifest import OUTPUT_MEDIA_TYPES, media_type_of
from comfybatch.outputs.storage import OutputStore, check_relpath

router = APIRouter(prefix="/api/batches", tags=["images"])
THUMB_PX = 256
_BINARY = "application/octet-stream"


def _thumbnail(data: bytes) -> bytes:
    with Image.open(io.BytesIO(data)) as image:  # an animated image opens at its first frame
        image.thumbnail((THUMB_PX, THUMB_PX))
        out = io.BytesIO()
        image.save(out, format="PNG")
    return out.getvalue()


def vouched_files(store: OutputStore, batch_dir: str, files: Iterable[StoredFile]) -> list[tuple[str, StoredFile]]:
    """The journaled `files` that are safe store paths inside `batch_dir`, with their relative paths."""
    vouched = []
    for stored in files:
        relpath = store.relpath_of(stored.uri)
        if relpath is None:
            continue
        try:
            safe = check_relpath(relpath)
        except UnsafePath:
            continue
        if safe.startswith(f"{batch_dir}/"):  # the journal of this batch only vouches for files in its folder
            vouched.append((safe, stored))
    return vouched


_IMAGE_MEDIA: dict[str, dict[str, object]] = {media: {} for media in sorted({*OUTPUT_MEDIA_TYPES, _BINARY})}


@router.get(
    "/{batch_id}/items/{key}/image",
    response_class=Response,
    responses={200: {"content": _IMAGE_MEDIA, "description": "The stored file's bytes with its media type (an "
                     "animated WebP, a WebM…), or a PNG thumbnail of its first image (first frame)."}},
)  # fmt: skip
async def get_image(
    batch_id: UUID, key: str, launcher: LauncherDep, _key: KeyName, thumb: Annotated[bool, Query()] = False
) -> Response:
    """The item's first stored file, or a PNG thumbnail of its first image; `key` only selects a journal record."""
    run = await launcher.get(batch_id)
    spec = launcher.spec_of(run)
    record = (await launcher.records(spec, run)).get(key)
    files = record.result.files if record and record.result else []
    vouched = vouched_files(launcher.store_of(spec), await launcher.batch_dir(spec, run.id), files)
    if thumb:  # Pillow draws images, not videos or sounds
        vouched = [(safe, stored) for safe, stored in vouched if media_type_of(safe).startswith("image/")]
    for safe, _stored in vouched:
        data = await launcher.read_file(spec, safe)
        if thumb:
            return Response(_thumbnail(data), media_type="image/png")
        return Response(data, media_type=media_type_of(safe))
    raise BatchNotFound(f"batch {batch_id} has no {'image' if thumb else 'file'} for item {key!r}")
