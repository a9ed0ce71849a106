"""Batch identity: which folder a request belongs in, and one live run per folder (local and object stores)."""

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path

import pytest

from comfybatch.errors import BatchConflict
from comfybatch.models import BatchSpec
from comfybatch.outputs.identity import (
    OWNER_FILE,
    BatchFolder,
    Owner,
    claimed,
    find_folder,
    remember_request,
    request_identity,
)
from comfybatch.outputs.storage import OutputStore

pytestmark = pytest.mark.anyio


def _spec(**fields: object) -> BatchSpec:
    return BatchSpec.model_validate({"name": "book", "workflow": "txt2img-tiny", "prompts": ["a cat"], **fields})


def _stores(tmp_path: Path) -> list[OutputStore]:
    return [OutputStore(tmp_path / "out"), OutputStore(f"memory://identity-{uuid.uuid4().hex}")]


@pytest.mark.parametrize("where", ["local", "object"])
async def test_two_claims_at_once_let_exactly_one_run_in(tmp_path: Path, where: str) -> None:
    """Two runs claiming one folder at the same moment: one holds it, the other gets a 409 naming the holder."""
    store = _stores(tmp_path)[where == "object"]
    folder = BatchFolder("book", 1, resumed=False)

    async def claim(run: str) -> str:
        async with claimed(store, folder, run=run):
            await asyncio.sleep(1.0)
        return run

    outcomes = await asyncio.gather(claim("run-a"), claim("run-b"), return_exceptions=True)

    refused = [outcome for outcome in outcomes if isinstance(outcome, BatchConflict)]
    assert len(refused) == 1
    assert "is in use by run" in str(refused[0])


@pytest.mark.parametrize("where", ["local", "object"])
async def test_a_dead_owner_on_this_host_is_taken_over_at_once(tmp_path: Path, where: str) -> None:
    """An owner file left by a killed process (its pid gone, heartbeat fresh) does not block the rerun."""
    store = _stores(tmp_path)[where == "object"]
    dead = Owner(run="killed", host=socket.gethostname(), pid=2**22 + 7, heartbeat_at=time.time())
    store.write_bytes(f"book/{OWNER_FILE}", dead.model_dump_json().encode())

    async with claimed(store, BatchFolder("book", 1, resumed=True), run="rerun"):
        owner = json.loads(store.read_bytes(f"book/{OWNER_FILE}"))

    assert owner["run"] == "rerun"
    assert not store.exists(f"book/{OWNER_FILE}")


async def test_a_live_owner_elsewhere_blocks_until_its_heartbeat_is_stale(tmp_path: Path) -> None:
    """An owner on another machine with a fresh heartbeat holds the folder; one silent for a minute does not."""
    store = OutputStore(tmp_path / "out")
    fresh = Owner(run="other", host="gpu-box-2", pid=1, heartbeat_at=time.time())
    store.write_bytes(f"book/{OWNER_FILE}", fresh.model_dump_json().encode())

    with pytest.raises(BatchConflict, match="gpu-box-2"):
        async with claimed(store, BatchFolder("book", 1, resumed=True), run="mine"):
            pass
    store.write_bytes(
        f"book/{OWNER_FILE}", fresh.model_copy(update={"heartbeat_at": time.time() - 60}).model_dump_json().encode()
    )
    async with claimed(store, BatchFolder("book", 1, resumed=True), run="mine"):
        pass


async def test_another_request_under_the_name_is_refused_naming_each_difference(tmp_path: Path) -> None:
    """The stored request and a new one differing in defaults and prompts: 409 listing both fields."""
    store = OutputStore(tmp_path / "out")
    first = _spec(defaults={"steps": 2})
    await remember_request(store, await find_folder(store, first, request_identity(first)), request_identity(first))
    second = _spec(defaults={"steps": 3}, prompts=["a dog"])

    with pytest.raises(BatchConflict) as refused:
        await find_folder(store, second, request_identity(second))

    assert 'defaults: {"steps": 2} -> {"steps": 3}' in str(refused.value)
    assert "prompts:" in str(refused.value)


async def test_a_request_that_differs_only_in_priority_or_servers_is_the_same_batch(tmp_path: Path) -> None:
    """Priority, servers and dry_run do not change which images a batch renders: it resumes."""
    store = OutputStore(tmp_path / "out")
    first = _spec()
    await remember_request(store, await find_folder(store, first, request_identity(first)), request_identity(first))
    later = _spec(priority=50, servers=["gpu-a"])

    folder = await find_folder(store, later, request_identity(later))

    assert (folder.relpath, folder.resumed) == ("book", True)


async def test_an_edited_sheet_is_another_request(tmp_path: Path) -> None:
    """The sheet counts by its content: the same path with other rows is a different batch."""
    store, sheet = OutputStore(tmp_path / "out"), tmp_path / "rows.csv"
    sheet.write_text("prompt\na cat\n")
    spec = BatchSpec(name="book", workflow="txt2img-tiny", sheet=str(sheet))
    await remember_request(store, await find_folder(store, spec, request_identity(spec)), request_identity(spec))
    sheet.write_text("prompt\na dog\n")

    with pytest.raises(BatchConflict, match="sheet"):
        await find_folder(store, spec, request_identity(spec))
