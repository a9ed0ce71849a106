"""Faults a real server produces: hangs, interrupts, crashes, kills, dropped sockets, busy queues."""

import asyncio
import json
import time

import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.follow import Timeouts
from comfybatch.comfy.intake import load_workflow
from comfybatch.errors import JobInterrupted, JobTimeout, ServerUnavailable
from comfybatch.local.fleet import LocalComfyServer
from comfybatch.testing.fleet import journal_path
from comfybatch.testing.proxy import TcpProxy
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio


async def _until_running(comfy: ComfyClient, prompt_id: str, *, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while (await comfy.get_queue()).position(prompt_id) != "running":  # noqa: ASYNC110 - polling the server
            await asyncio.sleep(0.05)


def _executions(server: LocalComfyServer, nonce: str) -> list[dict[str, object]]:
    if not journal_path(server).exists():
        return []
    lines = [json.loads(line) for line in journal_path(server).read_text().splitlines() if line.strip()]
    return [line for line in lines if line.get("nonce") == nonce]


async def test_interrupt_stops_a_hanging_prompt(comfy_server: FleetServer) -> None:
    """Hang with progress on is interrupted by prompt id and ends as JobInterrupted."""
    prompt_id = new_prompt_id()
    workflow = load_workflow(graphs.hang(60, graphs.unique("hang"), report_progress=True))
    async with ComfyClient(comfy_server.url) as comfy:
        running = asyncio.create_task(comfy.run(workflow, prompt_id=prompt_id))
        await _until_running(comfy, prompt_id)
        await comfy.interrupt(prompt_id)
        with pytest.raises(JobInterrupted) as caught:
            await running

    assert caught.value.node_id == "2"


async def test_silent_prompt_times_out_as_failover(victim: LocalComfyServer) -> None:
    """A prompt that emits nothing (Hang without progress) fails with JobTimeout within the idle timeout."""
    workflow = load_workflow(graphs.hang(4, graphs.unique("silent"), report_progress=False))
    started = time.monotonic()
    async with ComfyClient(victim.url) as comfy:
        with pytest.raises(JobTimeout) as caught:
            await comfy.run(workflow, timeouts=Timeouts(idle_timeout_s=1.0))

    assert time.monotonic() - started < 3.5
    assert caught.value.failover
    assert caught.value.retryable


async def test_start_timeout_removes_the_waiting_prompt(comfy_server: FleetServer) -> None:
    """Stuck behind a long prompt, ours times out and is deleted from the queue, never run."""
    async with ComfyClient(comfy_server.url) as comfy:
        blocker_id = new_prompt_id()
        await comfy.queue_prompt(load_workflow(graphs.delay(2.0, graphs.unique("block"))), prompt_id=blocker_id,
                                 client_id="blocker")  # fmt: skip
        waiting_id = new_prompt_id()
        with pytest.raises(JobTimeout, match="not started"):
            await comfy.run(load_workflow(graphs.delay(0.1, graphs.unique("starved"))), prompt_id=waiting_id,
                            timeouts=Timeouts(start_timeout_s=0.5))  # fmt: skip
        position = (await comfy.get_queue()).position(waiting_id)
        await comfy.resume(blocker_id)
        history = await comfy.get_history(waiting_id)

    assert position is None
    assert history is None


async def test_crash_node_is_server_unavailable(victim: LocalComfyServer) -> None:
    """A server process that dies mid-prompt is a failover+retryable ServerUnavailable, promptly."""
    started = time.monotonic()
    async with ComfyClient(victim.url) as comfy:
        with pytest.raises(ServerUnavailable) as caught:
            await comfy.run(
                load_workflow(graphs.crash(0.3, graphs.unique("crash"))), timeouts=Timeouts(idle_timeout_s=30)
            )

    assert time.monotonic() - started < 15
    assert caught.value.failover
    assert caught.value.retryable


async def test_sigkill_mid_prompt_is_server_unavailable(victim: LocalComfyServer) -> None:
    """SIGKILL of the server during a 10 s prompt surfaces as ServerUnavailable well within the idle timeout."""
    prompt_id = new_prompt_id()
    async with ComfyClient(victim.url) as comfy:
        running = asyncio.create_task(comfy.run(load_workflow(graphs.delay(10, graphs.unique("kill"))),
                                                prompt_id=prompt_id, timeouts=Timeouts(idle_timeout_s=30)))  # fmt: skip
        await _until_running(comfy, prompt_id)
        killed_at = time.monotonic()
        victim.kill()
        with pytest.raises(ServerUnavailable):
            await running

    assert time.monotonic() - killed_at < 10


async def test_dropped_socket_still_sees_completion_once(victim: LocalComfyServer) -> None:
    """Cutting every connection mid-prompt: the result comes from /history and the graph ran exactly once."""
    graph = graphs.delay(1.5, graphs.unique("drop"))
    prompt_id = new_prompt_id()
    async with TcpProxy(victim.port) as proxy, ComfyClient(proxy.url) as comfy:
        running = asyncio.create_task(comfy.run(load_workflow(graph), prompt_id=prompt_id))
        await _until_running(comfy, prompt_id)
        proxy.cut()
        result = await running

    assert result.reconnects == 1
    assert len(result.outputs) == 1
    assert len(_executions(victim, graphs.nonce_of(graph))) == 1
