"""ComfyUI's own execution time of a prompt, read from its `/history` entry (execution_start to execution_success)."""

import pytest

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from tests.conftest import FleetServer
from tests.support import graphs
from tests.support.comfy import resumed_elsewhere

pytestmark = pytest.mark.anyio


async def test_run_reports_the_servers_execution_time(comfy_server: FleetServer) -> None:
    """A prompt that sleeps 1 s inside ComfyUI reports at least that much execution time, by the server's clock."""
    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graphs.delay(1.0, graphs.unique("gpu-seconds"))))

    assert result.execution_s is not None
    assert result.execution_s >= 1.0


async def test_resume_reports_the_execution_time_of_a_prompt_queued_elsewhere(comfy_server: FleetServer) -> None:
    """A prompt followed by id alone (a recovered job) still gets its execution time from the history entry."""
    _, result = await resumed_elsewhere(comfy_server.url, load_workflow(graphs.delay(0.5, graphs.unique("gpu-resume"))))

    assert result.execution_s is not None
    assert result.execution_s >= 0.5
