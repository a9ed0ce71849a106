"""Shared pieces of the fault tests: waiting on what other processes do, and where each image was rendered."""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator

import httpx
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks.server import name_from_url
from comfybatch.flows.batch import generate_batch
from comfybatch.local.fleet import LocalComfyServer
from comfybatch.models import BatchReport, BatchSpec
from tests.support import batches


async def wait_for(predicate: Callable[[], bool], *, timeout_s: float = 60.0) -> None:
    """Poll `predicate` (files or processes another party changes) until it holds.

    Raises:
        TimeoutError after `timeout_s`.
    """
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - watching files another process writes
            await asyncio.sleep(0.05)


def renders(servers: Iterable[LocalComfyServer]) -> dict[str, list[str]]:
    """`{nonce: [server name, ...]}`: one entry per successful execution, from the servers' node journals.

    Names are the fleet names comfybatch gives the servers (`name_from_url`), as in the manifest.
    """
    where: dict[str, list[str]] = {}
    for server in servers:
        for nonce, count in batches.executions(server).items():
            where.setdefault(nonce, []).extend([name_from_url(server.url)] * count)
    return where


@contextlib.contextmanager
def prefect_api_of(api_url: str) -> Iterator[str]:
    """Point this process's Prefect client, and its log and event workers, at `api_url` for a while.

    The workers are process-wide and bound to the URL they started with: drain them on the way in
    (so this block's logs and events go to `api_url`) and on the way out (so later tests get fresh ones).
    """
    _drain_prefect_workers()
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        try:
            yield api_url
        finally:
            _drain_prefect_workers()


def _drain_prefect_workers() -> None:
    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


@contextlib.asynccontextmanager
async def running_batch(spec: BatchSpec) -> AsyncIterator["asyncio.Task[BatchReport]"]:
    """`generate_batch(spec)` running in the background; cancelled if the block is left before it ends."""
    task = asyncio.create_task(generate_batch(spec))
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait([task])


def port_of(url: str) -> int:
    """The port of a server URL (for a proxy in front of it)."""
    port = httpx.URL(url).port
    assert port is not None
    return port
