"""A batch's identity: its name *and* its request. One folder per identity, one live run per folder.

`<name>/.batch/request.json` holds what the batch was asked to render (the fields that decide its images).
The same name with the same request resumes that folder; with another request it is refused (409, naming
the fields that differ) unless the request asks for a new version (`<name>.v2`, `<name>.v3`, …: a dot can
never be part of a batch name, so a version folder never collides with another batch).

`<name>/.batch/owner.json` is the run that works in the folder now, with a heartbeat. On a local filesystem
it is created atomically (a hard link). On object stores, which have no such operation, two runs started at
once both write it, wait `_SETTLE_S` and read it back: only the last writer goes on (Fischer's mutual
exclusion, sound while a store write takes less than `_SETTLE_S`, 0.5 s). A dead owner (its
process gone on this host, or its heartbeat older than `_STALE_S`) is taken over, so a rerun after a crash
never waits. `<name>/.batch/runs/<flow_run_id>` lists every run that used the folder: the dashboard finds
a run's folder by it.
"""

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, JsonValue

from comfybatch.errors import BatchConflict, BatchRequestError, RequestProblem, StorageError
from comfybatch.models import BatchSpec
from comfybatch.outputs.storage import OutputStore

RECORD_FOLDER = ".batch"
REQUEST_FILE = f"{RECORD_FOLDER}/request.json"
OWNER_FILE = f"{RECORD_FOLDER}/owner.json"
RUNS_FOLDER = f"{RECORD_FOLDER}/runs"
# The request fields that decide which images a batch renders. Priority, servers, output and dry_run do not:
# the same batch may be resumed on other servers or at another priority.
IDENTITY_FIELDS = ("workflow", "bindings", "prompts", "sweep", "defaults", "images_per_item", "seed_policy",
                   "base_seed")  # fmt: skip
MAX_VERSIONS = 1000
_SETTLE_S = 0.5
_TAKE_ATTEMPTS = 5
_HEARTBEAT_S = 10.0
_STALE_S = 45.0
_SHOWN_CHARS = 60


def version_folder(name: str, version: int) -> str:
    """The folder of a batch's `version` (1 is the name itself)."""
    return name if version == 1 else f"{name}.v{version}"


def request_identity(spec: BatchSpec) -> dict[str, JsonValue]:
    """What makes two requests the same batch: the image-deciding fields, and the sheet by its content.

    Raises:
        BatchRequestError naming the sheet when it cannot be read.
    """
    identity: dict[str, JsonValue] = spec.model_dump(mode="json", include=set(IDENTITY_FIELDS))
    identity["sheet_sha256"] = _sheet_digest(spec.sheet) if spec.sheet else None
    return identity


def differences(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """One line per field that differs: `field: stored -> requested` (long values shortened)."""
    lines = []
    for field in sorted(set(stored) | set(requested)):
        if stored.get(field) != requested.get(field):
            lines.append(f"{_field_name(field)}: {_shown(stored.get(field))} -> {_shown(requested.get(field))}")
    return lines


class Owner(BaseModel):
    """The run working in a batch folder now."""

    model_config = ConfigDict(frozen=True)

    run: str
    host: str
    pid: int
    heartbeat_at: float

    def is_alive(self, now: float) -> bool:
        if self.host == socket.gethostname() and not _process_exists(self.pid):
            return False  # crashed or killed here: take over at once
        return now - self.heartbeat_at < _STALE_S


@dataclass(frozen=True)
class BatchFolder:
    """The folder a run claimed: where its journal, images and manifest go."""

    relpath: str
    version: int
    resumed: bool  # the folder already held this request


async def find_folder(store: OutputStore, spec: BatchSpec, identity: dict[str, JsonValue]) -> BatchFolder:
    """The folder `spec` belongs in: its name's, or with `new_version` the version holding the same request or
    the first free one.

    Raises:
        BatchConflict: the name holds another request and no new version was asked for.
    """
    for version in range(1, MAX_VERSIONS + 1):
        relpath = version_folder(spec.name, version)
        stored = await asyncio.to_thread(_read_json, store, f"{relpath}/{REQUEST_FILE}")
        if stored is None:
            # Free, or written before request records existed: adopted as this request (as reruns always did).
            return BatchFolder(relpath, version, resumed=False)
        if stored == identity:
            return BatchFolder(relpath, version, resumed=True)
        if not spec.new_version:
            changed = differences(stored, identity)
            raise BatchConflict(
                f"batch {spec.name!r} already exists with another request; rerun it unchanged to resume it, choose "
                f"another name, or ask for a new version (new_version: true, CLI --new-version). What differs:"
                + "".join(f"\n  - {line}" for line in changed)
            )
    raise BatchConflict(f"batch {spec.name!r} has {MAX_VERSIONS} versions; choose another name")


@contextlib.asynccontextmanager
async def claimed(store: OutputStore, folder: BatchFolder, *, run: str) -> AsyncIterator[BatchFolder]:
    """Hold `folder` for `run` (heartbeat included) until the block ends.

    Raises:
        BatchConflict: another live run works in the folder.
    """
    me = Owner(run=run, host=socket.gethostname(), pid=os.getpid(), heartbeat_at=time.time())
    owner_path = f"{folder.relpath}/{OWNER_FILE}"
    await _take(store, owner_path, me, folder)
    await asyncio.to_thread(store.write_bytes, f"{folder.relpath}/{RUNS_FOLDER}/{run}", b"")
    beat = asyncio.create_task(_heartbeat(store, owner_path, me))
    try:
        yield folder
    finally:
        beat.cancel()
        await asyncio.gather(beat, return_exceptions=True)
        with contextlib.suppress(StorageError):
            await asyncio.to_thread(_release, store, folder, run)


async def remember_request(store: OutputStore, folder: BatchFolder, identity: dict[str, JsonValue]) -> None:
    """Write the folder's request once, after the request proved valid (a refused request claims no name)."""
    if not folder.resumed:
        body = json.dumps(identity, sort_keys=True, indent=1).encode()
        await asyncio.to_thread(store.write_bytes, f"{folder.relpath}/{REQUEST_FILE}", body)


def run_folder(store: OutputStore, spec: BatchSpec, run: str) -> str:
    """The folder `run` of `spec` works in (the name's own folder until the run has claimed one)."""
    if spec.new_version:
        for version in range(2, MAX_VERSIONS + 1):
            relpath = version_folder(spec.name, version)
            if store.exists(f"{relpath}/{RUNS_FOLDER}/{run}"):
                return relpath
            if not store.exists(relpath):
                break
    return spec.name


def _release(store: OutputStore, folder: BatchFolder, run: str) -> None:
    """Give the folder up; a folder whose request was refused (no request recorded) is removed again."""
    owner_path = f"{folder.relpath}/{OWNER_FILE}"
    current = _read_owner(store, owner_path)
    if current is not None and current.run == run:
        store.delete(owner_path)
    if folder.resumed or store.exists(f"{folder.relpath}/{REQUEST_FILE}"):
        return
    store.delete(f"{folder.relpath}/{RUNS_FOLDER}/{run}")
    if (local := store.local_path(folder.relpath)) is not None:
        for empty in (local / RUNS_FOLDER, local / RECORD_FOLDER, local):
            with contextlib.suppress(OSError):  # not empty (another run's files): kept
                empty.rmdir()


async def _take(store: OutputStore, owner_path: str, me: Owner, folder: BatchFolder) -> None:
    if (local := store.local_path(owner_path)) is not None:
        if (other := await asyncio.to_thread(_take_local, local, me)) is not None:
            raise _busy(folder, other)
        return
    current = await asyncio.to_thread(_read_owner, store, owner_path)
    if current is not None and current.run != me.run and current.is_alive(time.time()):
        raise _busy(folder, current)
    await asyncio.to_thread(store.write_bytes, owner_path, me.model_dump_json().encode())
    await asyncio.sleep(_SETTLE_S)  # any run that saw the folder free has written by now
    current = await asyncio.to_thread(_read_owner, store, owner_path)
    if current is not None and current.run != me.run:
        raise _busy(folder, current)


def _take_local(path: Path, me: Owner) -> Owner | None:
    """Claim on a local filesystem without waiting: a hard link fails if the owner file exists, and a stale owner
    is renamed away (only one racer's rename succeeds). Returns the live owner that holds it, or None once ours."""
    path.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(_TAKE_ATTEMPTS):
        mine = path.with_name(f".owner.{uuid.uuid4().hex}.tmp")
        mine.write_text(me.model_dump_json(), encoding="utf-8")
        try:
            os.link(mine, path)
            return None
        except FileExistsError:
            pass
        finally:
            mine.unlink()
        try:
            current: Owner | None = Owner.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            continue  # released meanwhile: try again
        except ValueError:
            current = None  # torn: nobody owns it
        if current is not None and (current.run == me.run or current.is_alive(time.time())):
            return None if current.run == me.run else current
        stale = path.with_name(f".stale.{uuid.uuid4().hex}")
        with contextlib.suppress(FileNotFoundError):  # another racer moved it first
            os.rename(path, stale)
            stale.unlink()
    raise BatchConflict(f"could not claim {path.parent.parent.name!r}: its owner file keeps changing; try again")


async def _heartbeat(store: OutputStore, owner_path: str, me: Owner) -> None:
    while True:
        await asyncio.sleep(_HEARTBEAT_S)
        beat = me.model_copy(update={"heartbeat_at": time.time()})
        with contextlib.suppress(StorageError):  # a missed beat is retried; the owner goes stale only after 45 s
            await asyncio.to_thread(store.write_bytes, owner_path, beat.model_dump_json().encode())


def _busy(folder: BatchFolder, owner: Owner) -> BatchConflict:
    return BatchConflict(
        f"batch folder {folder.relpath!r} is in use by run {owner.run} (on {owner.host}); wait for it to end or "
        "cancel it, then rerun to resume"
    )


def _read_owner(store: OutputStore, relpath: str) -> Owner | None:
    data = _read_json(store, relpath)
    try:
        return Owner.model_validate(data) if data is not None else None
    except ValueError:
        return None  # a torn write: nobody owns it


def _read_json(store: OutputStore, relpath: str) -> dict[str, Any] | None:
    if not store.exists(relpath):
        return None
    try:
        data = json.loads(store.read_bytes(relpath))
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _sheet_digest(source: str) -> str:
    try:
        with fsspec.open(source, "rb") as handle:
            return hashlib.sha256(handle.read()).hexdigest()
    except (OSError, ValueError) as exc:
        problem = RequestProblem(f"cannot read {source!r} ({type(exc).__name__})", field="sheet")
        raise BatchRequestError("the sheet cannot be read", problems=(problem,)) from None


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _field_name(field: str) -> str:
    return "sheet (its content)" if field == "sheet_sha256" else field


def _shown(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 1] + "…"
