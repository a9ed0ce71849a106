"""ComfyUI's own execution time of a prompt, read from its `/history` entry (execution_start to execution_success)."""

import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.workflow import load_workflow
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio


async def test_run_reports_the_servers_execution_time(comfy_server: FleetServer) -> None:
    """A prompt that sleeps 1 s inside ComfyUI reports at least that much execution time, by the server's clock."""
    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graphs.delay(1.0, graphs.unique("gpu-seconds"))))

    assert result.execution_s is not None
    assert result.execution_s >= 1.0


async def test_resume_reports_the_execution_time_of_a_prompt_queued_elsewhere(comfy_server: FleetServer) -> None:
    """A prompt followed by id alone (a recovered job) still gets its execution time from the history entry."""
    workflow = load_workflow(graphs.delay(0.5, graphs.unique("gpu-seconds-resume")))
    prompt_id = new_prompt_id()
    async with ComfyClient(comfy_server.url) as first:
        await first.queue_prompt(workflow, prompt_id=prompt_id, client_id="gone-away")

    async with ComfyClient(comfy_server.url) as second:
        result = await second.resume(prompt_id)

    assert result.execution_s is not None
    assert result.execution_s >= 0.5
