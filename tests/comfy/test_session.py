"""A session per server on a real ComfyUI: prompts share one socket, routed by prompt_id, reconciled together."""

import asyncio
import logging

import httpx
import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.events import ComfyEvent
from comfybatch.comfy.follow import PromptResult
from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.session import borrow_session, close_sessions, open_sessions
from comfybatch.testing.proxy import TcpProxy
from tests.conftest import FleetServer, SuiteFleet
from tests.support import graphs

pytestmark = pytest.mark.anyio


class CountingProxy(TcpProxy):
    """A `TcpProxy` that counts the connections it accepted (the server-side view of our sockets)."""

    accepted = 0

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        await super()._accept(client_reader, client_writer)


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting `POST /prompt` requests."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.submissions = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if (request.method, request.url.path) == ("POST", "/prompt"):
            self.submissions += 1
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def _port(server: FleetServer) -> int:
    port = httpx.URL(server.url).port
    assert port is not None
    return port


async def _until_running(comfy: ComfyClient, prompt_id: str, *, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while (await comfy.get_queue()).position(prompt_id) != "running":  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.05)


async def test_two_prompts_share_one_socket_and_each_gets_only_its_own_events(comfy_server: FleetServer) -> None:
    """Two prompts followed at once over one connection: each follower sees only events of its own prompt."""
    events: dict[str, list[ComfyEvent]] = {}
    ids = [new_prompt_id(), new_prompt_id()]
    async with CountingProxy(_port(comfy_server)) as proxy, ComfyClient(proxy.url) as comfy:
        results = await asyncio.gather(*(
            comfy.run(load_workflow(graphs.delay(0.4, graphs.unique("shared"))), prompt_id=prompt_id,
                      on_event=events.setdefault(prompt_id, []).append)
            for prompt_id in ids
        ))  # fmt: skip
        connections = comfy.events.connections

    assert [result.prompt_id for result in results] == ids
    for prompt_id in ids:
        assert events[prompt_id][0].type == "execution_start"
        assert events[prompt_id][-1].is_terminal
        assert {event.prompt_id for event in events[prompt_id]} <= {prompt_id, None}
    assert connections == 1
    assert proxy.accepted <= 3  # one socket, at most two pooled HTTP connections (before: a socket per prompt)


async def test_dropped_socket_reconciles_every_prompt_in_flight_once(
    comfy_server: FleetServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A cut while one prompt runs and one waits: both finish through /history, neither is submitted again."""
    caplog.set_level(logging.INFO, logger="comfybatch.comfy.follow")
    transport = CountingTransport()
    ids = [new_prompt_id(), new_prompt_id()]
    async with TcpProxy(_port(comfy_server)) as proxy, ComfyClient(proxy.url, transport=transport) as comfy:
        running = [
            asyncio.create_task(comfy.run(load_workflow(graphs.delay(1.5, graphs.unique("cut"))), prompt_id=prompt_id))
            for prompt_id in ids
        ]
        await _until_running(comfy, ids[0])
        proxy.cut()
        results: list[PromptResult] = list(await asyncio.gather(*running))
        reconnected = comfy.events.connections

    reconciled = {getattr(record, "prompt_id", None) for record in caplog.records}
    assert [(result.prompt_id, result.reconnects, len(result.outputs)) for result in results] == [
        (prompt_id, 1, 1) for prompt_id in ids
    ]
    assert set(ids) <= reconciled
    assert transport.submissions == 2
    assert reconnected >= 2  # the socket came back on its own for the prompts that follow


async def test_prompts_submitted_after_a_drop_use_the_new_socket(comfy_server: FleetServer) -> None:
    """After a cut the socket reconnects under a fresh client id, and the next prompt is followed by its events."""
    events: list[ComfyEvent] = []
    async with TcpProxy(_port(comfy_server)) as proxy, ComfyClient(proxy.url) as comfy:
        await comfy.run(load_workflow(graphs.solid(graphs.unique("before-cut"))))
        first_id = comfy.events.client_id
        proxy.cut()
        async with asyncio.timeout(10):
            while comfy.events.state == "up":  # noqa: ASYNC110 - until the socket notices the cut
                await asyncio.sleep(0.05)
        result = await comfy.run(load_workflow(graphs.delay(0.3, graphs.unique("after-cut"))), on_event=events.append)
        second_id = comfy.events.client_id

    assert comfy.events.connections == 2
    assert None not in (first_id, second_id)
    assert first_id != second_id
    assert result.reconnects == 0
    assert events[0].type == "execution_start"
    assert events[-1].is_terminal


async def test_jobs_borrow_one_session_per_server(comfy_fleet: SuiteFleet) -> None:
    """Six concurrent borrowers of two servers share two sessions: two sockets in all, none per job."""

    async def job(url: str) -> tuple[ComfyClient, PromptResult]:
        async with borrow_session(url, name=f"s-{url.rsplit(':', 1)[-1]}") as comfy:
            return comfy, await comfy.run(load_workflow(graphs.solid(graphs.unique("borrow"))))

    try:
        answers = await asyncio.gather(*(job(url) for url in [server.url for server in comfy_fleet.servers[:2]] * 3))
        sessions = open_sessions()
        connections = sorted(session.events.connections for session in sessions)
    finally:
        await close_sessions()

    assert len({id(comfy) for comfy, _ in answers}) == 2
    assert len(sessions) == 2
    assert connections == [1, 1]
    assert open_sessions() == []
