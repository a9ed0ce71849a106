"""The batch flow borrows one session per server: no job opens a connection of its own."""

import asyncio
from pathlib import Path

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.comfy.session import close_sessions, open_sessions
from comfybatch.flows.batch import generate_batch
from comfybatch.settings import get_settings
from comfybatch.testing.proxy import TcpProxy
from tests.conftest import FleetServer, SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, use_test_settings
from tests.support import batches
from tests.support.faults import port_of

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]

IMAGES = 12


class CountingProxy(TcpProxy):
    """A `TcpProxy` that counts the connections it accepted: the server's view of our sockets."""

    accepted = 0

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._accept(client_reader, client_writer)


async def test_batch_opens_one_socket_per_server_not_one_per_job(
    prefect_api: str, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve images on two servers: each server sees one event socket and a few pooled HTTP connections."""
    backends = comfy_fleet.servers[:2]
    async with CountingProxy(port_of(backends[0].url)) as first, CountingProxy(port_of(backends[1].url)) as second:
        proxies = [first, second]
        fleet = SuiteFleet([FleetServer(proxy.url, proxy.url) for proxy in proxies], None)
        use_test_settings(monkeypatch, fleet, tmp_path)
        spec = batches.delay_spec("sessions", seconds=0.1, count=IMAGES,
                                  servers=[name_from_url(proxy.url) for proxy in proxies])  # fmt: skip
        try:
            report = await generate_batch(spec)
            sockets = {session.name: session.events.connections for session in open_sessions()}
        finally:
            await close_sessions()
            get_settings.cache_clear()

    assert (report.done, report.failed) == (IMAGES, 0)
    assert sockets == {name_from_url(proxy.url): 1 for proxy in proxies}
    # Before: a socket and an HTTP connection per job (12+ per server). Now one socket, a pool of at most four.
    assert [proxy.accepted <= 5 for proxy in proxies] == [True, True]
