"""Issue 15 §2 on real ComfyUI and Prefect: `comfybatch.toml` changed under a running batch. A server added takes
prompts within 5 s; a server removed gets no new prompt and hands back the prompt waiting in its queue, which runs
elsewhere; the batch completes with every image once."""

import asyncio
import time
from pathlib import Path

import httpx
import pandas as pd
import pytest

from comfybatch.blocks.fleet import delete_servers, given_servers
from comfybatch.blocks.server import ComfyUIServer
from comfybatch.flows.batch import generate_batch
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings, get_settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches

pytestmark = [pytest.mark.anyio, pytest.mark.slow, PREFECT_SOCKETS]
_TAKES_EFFECT_S = 5.0  # the bound for a fleet change to reach running batches
# 20 s on one server: the change (3 s in, later when the loop is busy starting the batch) leaves well over 5 s of work
_JOINED_COUNT = 40


def _fleet_file(path: Path, urls: list[str], *, slots: int) -> None:
    path.write_text("".join(f'[[servers]]\nurl = "{url}"\nslots = {slots}\n\n' for url in urls), encoding="utf-8")


def _use_fleet_file(monkeypatch: pytest.MonkeyPatch, path: Path) -> Settings:
    monkeypatch.setenv("COMFYBATCH_CONFIG_FILE", str(path))
    get_settings.cache_clear()
    return get_settings()


async def _queue(url: str) -> tuple[int, int]:
    """(running, pending) prompts on a ComfyUI server."""
    async with httpx.AsyncClient(timeout=10) as client:
        body = (await client.get(f"{url}/queue")).json()
    return len(body["queue_running"]), len(body["queue_pending"])


def _assert_joined(settings: Settings, batch: str, *, first: str, joined: str, at: pd.Timestamp) -> pd.DataFrame:
    """Before `at` only `first` rendered; from 5 s after it on, `joined` took at least a third of the images."""
    rows = read_manifest(OutputStore(settings.output_root), batch)
    assert rows is not None
    assert set(rows[rows["queued_at"] < at]["server"]) == {first}
    later = rows[rows["queued_at"] > at + pd.Timedelta(seconds=_TAKES_EFFECT_S)]
    assert len(later) > 0, "the batch ended before the change could be seen; make it longer"
    assert (later["server"] == joined).sum() >= len(later) // 3, later["server"].value_counts()
    return rows


async def test_server_added_to_the_fleet_file_takes_prompts_within_5_s(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch started on one server of `comfybatch.toml`: the second server, added to the file 3 s in, renders
    images of it from 5 s after the change on."""
    (first, second), urls = server_names(comfy_fleet), [server.url for server in comfy_fleet.servers]
    fleet_file = tmp_path / "comfybatch.toml"
    _fleet_file(fleet_file, urls[:1], slots=1)
    settings = _use_fleet_file(monkeypatch, fleet_file)
    spec = batches.delay_spec("live-add", seconds=0.5, count=_JOINED_COUNT, servers=[])
    running = asyncio.create_task(generate_batch(spec))
    await asyncio.sleep(3.0)
    _fleet_file(fleet_file, urls, slots=1)
    added_at = pd.Timestamp.now(tz="UTC")
    report = await running

    assert report.done == _JOINED_COUNT
    _assert_joined(settings, "live-add", first=first, joined=second, at=added_at)


async def test_server_removed_from_the_fleet_file_hands_back_its_queued_prompt(
    batch_settings: Settings, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two servers with two slots each (one prompt running, one queued on each): the second removed from the file
    while its first prompt runs. Its queued prompt is taken off its queue and rendered on the first server; the
    running one finishes where it is; nothing fails."""
    (first, second), urls = server_names(comfy_fleet), [server.url for server in comfy_fleet.servers]
    fleet_file = tmp_path / "comfybatch.toml"
    _fleet_file(fleet_file, urls, slots=2)
    settings = _use_fleet_file(monkeypatch, fleet_file)
    spec = batches.delay_spec("live-remove", seconds=5.0, count=6, servers=[])
    running = asyncio.create_task(generate_batch(spec))
    deadline = time.monotonic() + 60
    while await _queue(urls[1]) != (1, 1):  # its first prompt runs, its second waits
        assert time.monotonic() < deadline, "the second server never had a prompt running and one queued"
        await asyncio.sleep(0.1)
    _fleet_file(fleet_file, urls[:1], slots=2)
    removed_at = time.monotonic()
    while (await _queue(urls[1]))[1] != 0:
        assert time.monotonic() - removed_at < _TAKES_EFFECT_S, "the queued prompt stayed on the removed server"
        await asyncio.sleep(0.1)
    report = await running

    rows = read_manifest(OutputStore(settings.output_root), "live-remove")
    assert rows is not None
    assert (report.done, report.failed) == (6, 0)
    assert (rows["server"] == second).sum() == 1, rows[["server", "started_at"]]  # only the one running there
    assert (rows["server"] == first).sum() == 5


async def test_server_block_saved_mid_batch_takes_prompts_within_5_s(
    batch_settings: Settings, comfy_fleet: SuiteFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch started with one server in `COMFYUI_URLS`: a ComfyUI Server block for the second, saved 3 s in (as
    someone would in the Prefect UI), renders images of it from 5 s after the save on."""
    (first, second), urls = server_names(comfy_fleet), [server.url for server in comfy_fleet.servers]
    monkeypatch.setenv("COMFYUI_URLS", urls[0])
    get_settings.cache_clear()
    settings = get_settings()
    spec = batches.delay_spec("live-block", seconds=0.5, count=_JOINED_COUNT, servers=[])
    running = asyncio.create_task(generate_batch(spec))
    await asyncio.sleep(3.0)
    await ComfyUIServer(url=urls[1], slots=1).asave("studio-b", overwrite=True)
    added_at = pd.Timestamp.now(tz="UTC")
    try:
        report = await running
    finally:
        await delete_servers(["studio-b"])

    assert report.done == _JOINED_COUNT
    rows = _assert_joined(settings, "live-block", first=first, joined="studio-b", at=added_at)
    assert second not in set(rows["server"])  # the block's name, not the URL's


async def test_batch_on_a_runs_own_servers_keeps_them_past_the_fleet_watch(
    batch_settings: Settings, comfy_fleet: SuiteFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`comfybatch run --server URL` saves the server as a `cli` block for the run only: a batch longer than a few
    fleet polls renders every image there (the watch must not take the run's own server for one that left)."""
    monkeypatch.setenv("COMFYUI_URLS", comfy_fleet.servers[1].url)  # the configured fleet is the other server
    monkeypatch.setenv("COMFYBATCH_START_TIMEOUT_S", "10")  # a server wrongly taken away fails the batch fast
    get_settings.cache_clear()
    settings = get_settings()
    async with given_servers([comfy_fleet.servers[0].url], settings) as names:
        report = await generate_batch(batches.delay_spec("live-cli", seconds=0.5, count=14, servers=names))

    assert (report.done, report.failed) == (14, 0)
