"""The slot broker against a real Prefect server: who gets a freed slot, and how soon."""

import asyncio
import contextlib
import uuid

import pytest

from comfybatch.blocks.server import ServerConfig
from comfybatch.tasks.dispatch import SlotBroker
from tests.flows.conftest import PREFECT_SOCKETS

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]


def _one_slot_server() -> ServerConfig:
    # Nothing listens there: the broker only takes leases on its limit, which it creates on first use.
    return ServerConfig(name=f"fifo-{uuid.uuid4().hex[:8]}", url="http://127.0.0.1:9", slots=1)


async def test_a_freed_slot_goes_to_the_job_that_waited_longest(prefect_api: str) -> None:
    """A slot given back goes to the job already waiting for it, not to a job that asks right after (here the
    holder's own next job, asking without a pause)."""
    server = _one_slot_server()
    order: list[str] = []
    async with SlotBroker([server]) as broker, contextlib.AsyncExitStack() as holding:
        await holding.enter_async_context(broker.slot([server.name], deadline_s=30.0))

        async def waiting_job() -> None:
            async with broker.slot([server.name], deadline_s=30.0):
                order.append("waited")

        waiter = asyncio.create_task(waiting_job())
        await asyncio.sleep(0.2)  # in line by now
        await holding.aclose()
        async with broker.slot([server.name], deadline_s=30.0):
            order.append("asked later")
        await waiter

    assert order == ["waited", "asked later"]


async def test_a_waiting_job_gets_a_freed_slot_without_waiting_for_the_poll(prefect_api: str) -> None:
    """A job waiting for a slot of its own batch is handed it as it is given back, with no new lease taken."""
    server = _one_slot_server()
    async with SlotBroker([server]) as broker, contextlib.AsyncExitStack() as holding:
        held = await holding.enter_async_context(broker.slot([server.name], deadline_s=30.0))
        handed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def waiting_job() -> None:
            async with broker.slot([server.name], deadline_s=30.0) as slot:
                handed.set_result(slot.lease_id)

        waiter = asyncio.create_task(waiting_job())
        await asyncio.sleep(0.2)
        await holding.aclose()
        for _ in range(5):  # a few turns of the loop, far less than the broker's poll
            await asyncio.sleep(0)
        assert handed.done()
        await waiter

    assert handed.result() == held.lease_id
