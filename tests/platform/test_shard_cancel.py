"""Stopping a batch's shards never rewrites the state of one that has ended."""

from collections.abc import Iterator

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Completed, Running, Scheduled

from comfybatch.flows.shards import cancel_shards
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.flows.conftest import PREFECT_SOCKETS

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS, pytest.mark.timeout(120)]


@flow(name="render-shard-stand-in")
def _shard() -> None:
    """Only its runs are made here: their states are what is tested."""


@pytest.fixture
def prefect_api(platform_prefect: LocalPrefectServer) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: platform_prefect.api_url}):
        yield platform_prefect.api_url


async def test_stopping_shards_cancels_those_going_and_leaves_an_ended_one_as_it_ended(prefect_api: str) -> None:
    """A shard that completed just before its batch was cancelled stays Completed (forced, it became Cancelling for
    good: no process was left to end it); a running one is asked to stop; one not started yet is Cancelled."""
    async with get_client() as client:
        ended = await client.create_flow_run(_shard, state=Completed())
        going = await client.create_flow_run(_shard, state=Running())
        waiting = await client.create_flow_run(_shard, state=Scheduled())

        await cancel_shards(client, [ended.id, going.id, waiting.id])

        runs = await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[ended.id, going.id, waiting.id]))
        )
    states = {run.id: run.state.type if run.state else None for run in runs}
    assert states == {ended.id: StateType.COMPLETED, going.id: StateType.CANCELLING, waiting.id: StateType.CANCELLED}
