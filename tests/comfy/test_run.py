"""Queue -> follow -> history -> download against a real ComfyUI."""

import asyncio

import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.events import ComfyEvent
from comfybatch.comfy.follow import Timeouts
from comfybatch.comfy.intake import load_workflow
from comfybatch.errors import JobLost
from tests.conftest import FleetServer
from tests.support import graphs
from tests.support.comfy import resumed_elsewhere

pytestmark = pytest.mark.anyio


async def test_run_weight_free_graph_reports_events_in_protocol_order(comfy_server: FleetServer) -> None:
    """A weight-free graph ends with execution_success after its outputs, and one terminal event."""
    events: list[ComfyEvent] = []
    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graphs.solid(graphs.unique("order"))), on_event=events.append)

    types = [event.type for event in events]
    assert types[0] == "execution_start"
    assert types.index("executed") < types.index("execution_success")
    assert events[-1].is_terminal
    assert all(event.prompt_id in (None, result.prompt_id) for event in events)


async def test_download_keeps_the_bytes_comfyui_saved(comfy_server: FleetServer, tmp_path) -> None:
    """The downloaded PNG is byte-identical to the file in the server's output folder."""
    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graphs.solid(graphs.unique("bytes"), width=40, height=20)))
        (output,) = result.outputs
        saved = await comfy.download(output, tmp_path / output.filename)

    on_server = comfy_server.output_dir / output.subfolder / output.filename
    assert saved.path.read_bytes() == on_server.read_bytes()
    assert graphs.size(saved.path) == (40, 20)


async def test_run_outputs_inverted_pixels(comfy_server: FleetServer, tmp_path) -> None:
    """The graph really executed: an inverted 0x3366CC image is (204, 153, 51)."""
    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graphs.solid(graphs.unique("pixels"))))
        saved = await comfy.download(result.outputs[0], tmp_path / "x.png")

    assert graphs.close_to(graphs.pixel(saved.path), (204, 153, 51))


async def test_resume_follows_a_prompt_queued_by_another_client(comfy_server: FleetServer) -> None:
    """A prompt queued earlier is followed to its end by id alone, without resubmitting it."""
    prompt_id, result = await resumed_elsewhere(
        comfy_server.url, load_workflow(graphs.delay(0.5, graphs.unique("resume")))
    )

    assert result.prompt_id == prompt_id
    assert len(result.outputs) == 1


async def test_resume_of_unknown_prompt_is_job_lost(comfy_server: FleetServer) -> None:
    """A prompt id the server never saw is JobLost: fail over and resubmit."""
    async with ComfyClient(comfy_server.url) as comfy:
        with pytest.raises(JobLost) as caught:
            await comfy.resume(new_prompt_id())

    assert caught.value.failover
    assert caught.value.retryable


async def test_queue_state_shows_running_and_pending(comfy_server: FleetServer) -> None:
    """Two prompts queued behind each other: one running, one pending, both ours."""
    async with ComfyClient(comfy_server.url) as comfy:
        ids = [new_prompt_id(), new_prompt_id()]
        for prompt_id in ids:
            await comfy.queue_prompt(load_workflow(graphs.delay(0.6, graphs.unique("q"))), prompt_id=prompt_id,
                                     client_id="observer")  # fmt: skip
        queue = await comfy.get_queue()
        positions = [queue.position(prompt_id) for prompt_id in ids]
        await asyncio.gather(*(comfy.resume(prompt_id, timeouts=Timeouts(start_timeout_s=30)) for prompt_id in ids))

    assert sorted(positions, key=str) == ["pending", "running"]


async def test_progress_events_arrive_from_delay_node(comfy_server: FleetServer) -> None:
    """A 0.5 s Delay reports progress ticks that reach max."""
    events: list[ComfyEvent] = []
    async with ComfyClient(comfy_server.url) as comfy:
        await comfy.run(load_workflow(graphs.delay(0.5, graphs.unique("progress"))), on_event=events.append)

    ticks = [event.progress for event in events if event.progress]
    assert len(ticks) >= 3
    assert ticks[-1][0] == ticks[-1][1]


async def test_system_stats_reports_the_comfyui_version(comfy_server: FleetServer) -> None:
    """`/system_stats` parses, and names the ComfyUI version."""
    async with ComfyClient(comfy_server.url) as comfy:
        stats = await comfy.get_system_stats()

    assert stats.system.comfyui_version.startswith("0.")


async def test_object_info_is_cached_per_server(comfy_server: FleetServer) -> None:
    """A second lookup returns the cached object without another fetch; refresh fetches anew."""
    async with ComfyClient(comfy_server.url) as comfy:
        first = await comfy.get_object_info()
        second = await comfy.get_object_info()
        fresh = await comfy.get_object_info(refresh=True)

    assert first is second
    assert fresh is not first
    assert fresh.has_class("ComfybatchDelay")
