"""The slot broker against a real Prefect server: who gets a freed slot, and how soon."""

import asyncio
import contextlib
import uuid

import pytest
from prefect.client.orchestration import get_client

from comfybatch.blocks.server import ServerConfig
from comfybatch.tasks.dispatch import SlotBroker
from comfybatch.tasks.first_leases import FirstLeases
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


async def test_a_job_in_line_does_not_hold_up_a_later_job_that_can_use_another_server(prefect_api: str) -> None:
    """First come, first served per server: a job that may use a free server takes it, even while an earlier job
    waits for a busy one."""
    busy, free = _one_slot_server(), _one_slot_server()
    async with SlotBroker([busy, free]) as broker, broker.slot([busy.name], deadline_s=30.0):

        async def waiting_job() -> None:
            async with broker.slot([busy.name], deadline_s=30.0):
                pass

        waiter = asyncio.create_task(waiting_job())
        await asyncio.sleep(0.2)  # in line for the busy server by now
        async with broker.slot([busy.name, free.name], deadline_s=10.0) as slot:
            assert slot.server.name == free.name
        assert not waiter.done()
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)


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


async def _limit_of(server: ServerConfig) -> tuple[int, int]:
    async with get_client() as client:
        limit = await client.read_global_concurrency_limit_by_name(server.limit_name)
    return limit.limit, limit.active_slots


async def test_the_first_job_takes_the_lease_taken_before_the_broker_started(prefect_api: str) -> None:
    """A broker given `FirstLeases` hands their lease to its first job (on a one-slot server, so no other lease
    could be had), and gives back at once the lease of a server the batch does not use."""
    used, unused = _one_slot_server(), _one_slot_server()
    async with get_client() as client:
        for server in (used, unused):
            await client.upsert_global_concurrency_limit_by_name(server.limit_name, server.slots)

    async with FirstLeases([used, unused]) as first:
        await asyncio.sleep(0)  # the broker may start before the leases are back: it waits for them
        async with SlotBroker([used], first_leases=first) as broker:
            assert await _limit_of(unused) == (1, 0)
            async with broker.slot([used.name], deadline_s=30.0):
                assert await _limit_of(used) == (1, 1)

    assert await _limit_of(used) == (1, 0)
