"""`/api/batches/{id}/archive.zip`: the batch's stored images and manifest in one zip, streamed as it is built."""

import asyncio
import zipfile
from collections.abc import AsyncIterator
from uuid import UUID

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from prefect.client.schemas.objects import FlowRun

from comfybatch.dashboard.deps import KeyName, LauncherDep
from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.routes.images import vouched_files
from comfybatch.errors import BatchNotFound
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import MANIFEST_CSV, MANIFEST_PARQUET

router = APIRouter(prefix="/api/batches", tags=["images"])
_ZIP_MEDIA: dict[str, dict[str, object]] = {"application/zip": {}}


class _Chunks:
    """A write-only, unseekable file for `ZipFile`: what it writes is taken out chunk by chunk (so zipfile writes
    data descriptors, and nothing but the chunk in hand is held in memory)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def write(self, data: bytes, /) -> int:
        self._parts.append(bytes(data))
        self._written += len(data)
        return len(data)

    def tell(self) -> int:
        return self._written

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None

    def take(self) -> bytes:
        chunk, self._parts = b"".join(self._parts), []
        return chunk


async def _members(launcher: Launcher, spec: BatchSpec, run: FlowRun) -> list[tuple[str, str]]:
    """(store path, name in the zip) of every image the journal vouches for, in item order, then the manifests."""
    batch_dir = await launcher.batch_dir(spec, run.id)
    records = await launcher.records(spec, run)
    store = launcher.store_of(spec)
    members: list[tuple[str, str]] = []
    seen: set[str] = set()
    results = [record.result for record in records.values() if record.result is not None]
    for result in sorted(results, key=lambda result: result.job.index):  # item order, as the manifest lists them
        if result.status not in ("done", "skipped"):
            continue
        for relpath, _stored in vouched_files(store, batch_dir, result.files):
            if relpath not in seen:
                seen.add(relpath)
                members.append((relpath, relpath.removeprefix(f"{batch_dir}/")))
    for manifest in (MANIFEST_CSV, MANIFEST_PARQUET):
        if await launcher.exists(spec, f"{batch_dir}/{manifest}"):
            members.append((f"{batch_dir}/{manifest}", manifest))
    return members


async def _zip_stream(launcher: Launcher, spec: BatchSpec, members: list[tuple[str, str]]) -> AsyncIterator[bytes]:
    out = _Chunks()
    with zipfile.ZipFile(out, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for relpath, name in members:
            data = await launcher.read_file(spec, relpath)
            # Stored as is (PNG is compressed already): the bytes in the zip are the bytes in the store.
            await asyncio.to_thread(archive.writestr, zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
            yield out.take()
    yield out.take()  # the central directory, written on close


@router.get(
    "/{batch_id}/archive.zip",
    response_class=StreamingResponse,
    responses={200: {"content": _ZIP_MEDIA, "description": "The batch's images and manifest, stored (not deflated)."}},
)
async def get_archive(batch_id: UUID, launcher: LauncherDep, _key: KeyName) -> StreamingResponse:
    """Every image the batch has stored so far (journaled files of its folder only) and its manifest, as one zip.

    Raises:
        BatchNotFound: no such batch, or it has stored nothing yet.
    """
    run = await launcher.get(batch_id)
    spec = launcher.spec_of(run)
    members = await _members(launcher, spec, run)
    if not members:
        raise BatchNotFound(f"batch {spec.name} ({batch_id}) has stored no image or manifest yet")
    headers = {"Content-Disposition": f'attachment; filename="{spec.name}.zip"'}
    return StreamingResponse(_zip_stream(launcher, spec, members), media_type="application/zip", headers=headers)
