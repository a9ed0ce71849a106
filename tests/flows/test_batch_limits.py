"""Two batches sharing the servers: per-server limits hold, and priority decides who goes first."""

import asyncio
import time

import pandas as pd
import pytest

from comfybatch.comfy.client import ComfyClient
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchReport
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


async def _watch_depth(urls: list[str], stop: asyncio.Event) -> dict[str, int]:
    """The most prompts (running + pending) each server held at any sampled moment."""
    peak = dict.fromkeys(urls, 0)
    clients = [ComfyClient(url) for url in urls]
    try:
        while not stop.is_set():
            for url, comfy in zip(urls, clients, strict=True):
                peak[url] = max(peak[url], (await comfy.get_queue()).depth)
            await asyncio.sleep(0.02)
    finally:
        for comfy in clients:
            await comfy.aclose()
    return peak


async def _timed(coro) -> tuple[BatchReport, float]:  # type: ignore[no-untyped-def]
    report = await coro
    return report, time.monotonic()


async def test_two_batches_never_exceed_two_prompts_per_server(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Two concurrent batches on two servers with 2 slots each: no server ever holds more than 2 prompts."""
    names = server_names(comfy_fleet)
    first = batches.delay_spec("limit-a", seconds=0.3, count=10, servers=names)
    second = batches.delay_spec("limit-b", seconds=0.3, count=10, servers=names)
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch_depth([server.url for server in comfy_fleet.servers], stop))

    reports = await asyncio.gather(generate_batch(first), generate_batch(second))
    stop.set()
    peak = await watcher

    assert [report.done for report in reports] == [10, 10]
    assert max(peak.values()) == 2


async def test_higher_priority_batch_takes_the_servers(batch_settings: Settings, comfy_fleet: SuiteFleet) -> None:
    """While a high-priority batch still has jobs waiting, a running low-priority batch starts none on the
    shared servers (allowing 1 s for the priority post to be seen)."""
    names = server_names(comfy_fleet)
    low = batches.delay_spec("prio-low", seconds=0.3, count=24, servers=names, priority=0)
    high = batches.delay_spec("prio-high", seconds=0.3, count=10, servers=names, priority=10)

    low_run = asyncio.create_task(generate_batch(low))
    await asyncio.sleep(1.5)  # the low batch holds every slot by now
    high_report, low_report = await asyncio.gather(generate_batch(high), low_run)

    store = OutputStore(batch_settings.output_root)
    high_rows, low_rows = read_manifest(store, "prio-high"), read_manifest(store, "prio-low")
    assert high_rows is not None
    assert low_rows is not None
    window_start = high_rows["queued_at"].min() + pd.Timedelta(seconds=1)
    window_end = high_rows["queued_at"].max()  # the high batch's last job got its slot
    low_started_inside = low_rows["queued_at"].between(window_start, window_end).sum()
    assert (high_report.done, low_report.done) == (10, 24)
    assert low_started_inside <= 1
