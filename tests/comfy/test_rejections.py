"""Validation and run-time failures from a real ComfyUI, mapped to our errors."""

import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.intake import load_workflow
from comfybatch.errors import JobFailed, ServerIncompatible, WorkflowRejected
from tests.conftest import FleetServer
from tests.support import graphs

pytestmark = pytest.mark.anyio


async def _queue(url: str, graph: graphs.Graph) -> None:
    async with ComfyClient(url) as comfy:
        await comfy.queue_prompt(load_workflow(graph), prompt_id=new_prompt_id(), client_id="tests")


async def test_out_of_range_value_is_rejected_naming_node_and_input(comfy_server: FleetServer) -> None:
    """A 400 for width 999999 names node 1 (EmptyImage), input width, and is neither failover nor retryable."""
    graph = graphs.solid(graphs.unique("range"))
    graph["1"]["inputs"]["width"] = 999999

    with pytest.raises(WorkflowRejected) as caught:
        await _queue(comfy_server.url, graph)

    (problem,) = caught.value.problems
    assert (problem.node_id, problem.class_type, problem.input_name) == ("1", "EmptyImage", "width")
    assert problem.kind == "value_bigger_than_max"
    assert not caught.value.failover
    assert not caught.value.retryable


async def test_partially_valid_graph_200_with_node_errors_is_a_rejection(comfy_server: FleetServer) -> None:
    """A 200 that lists node_errors (one of two outputs invalid) fails, naming the bad node and input."""
    graph = graphs.solid(graphs.unique("partial"))
    graph["4"] = {"class_type": "ImageScale", "inputs": {"image": ["1", 0], "upscale_method": "nope",
                                                         "width": 8, "height": 8, "crop": "disabled"}}  # fmt: skip
    graph["5"] = {"class_type": "SaveImage", "inputs": {"images": ["4", 0], "filename_prefix": graphs.unique("p2")}}

    with pytest.raises(WorkflowRejected) as caught:
        await _queue(comfy_server.url, graph)

    assert [(p.node_id, p.input_name, p.kind) for p in caught.value.problems] == [
        ("4", "upscale_method", "value_not_in_list")
    ]


async def test_missing_checkpoint_is_server_incompatible(comfy_server: FleetServer) -> None:
    """value_not_in_list on ckpt_name means this server lacks the model: fail over, do not retry."""
    graph = load_workflow(graphs.TINY_TXT2IMG).with_input("1", "ckpt_name", "absent.safetensors")

    async with ComfyClient(comfy_server.url) as comfy:
        with pytest.raises(ServerIncompatible) as caught:
            await comfy.queue_prompt(graph, prompt_id=new_prompt_id(), client_id="tests")

    assert caught.value.failover
    assert not caught.value.retryable
    assert caught.value.problems[0].input_name == "ckpt_name"


async def test_unknown_node_class_is_server_incompatible_naming_the_node(comfy_server: FleetServer) -> None:
    """invalid_prompt for a class absent from /object_info names node id and class, and fails over."""
    graph = graphs.solid(graphs.unique("unknown"))
    graph["2"]["class_type"] = "NotInstalledAnywhere"

    with pytest.raises(ServerIncompatible) as caught:
        await _queue(comfy_server.url, graph)

    (problem,) = caught.value.problems
    assert (problem.node_id, problem.class_type, problem.kind) == ("2", "NotInstalledAnywhere", "missing_node_type")


async def test_no_output_node_is_rejected(comfy_server: FleetServer) -> None:
    """A graph without an output node is a workflow error."""
    graph = graphs.solid(graphs.unique("noout"))
    del graph["3"]

    with pytest.raises(WorkflowRejected, match="prompt_no_outputs"):
        await _queue(comfy_server.url, graph)


async def test_fail_node_is_job_failed_with_node_and_message(comfy_server: FleetServer) -> None:
    """An execution_error names the node, its class and the exception, and is not retried."""
    async with ComfyClient(comfy_server.url) as comfy:
        with pytest.raises(JobFailed) as caught:
            await comfy.run(load_workflow(graphs.fail("boom: the GPU caught fire", graphs.unique("fail"))))

    error = caught.value
    assert (error.node_id, error.node_type, error.exception_type) == ("2", "ComfybatchFail", "RuntimeError")
    assert error.exception_message == "boom: the GPU caught fire"
    assert not error.retryable
    assert not error.failover


async def test_hostile_prompt_text_survives_as_data(comfy_server: FleetServer) -> None:
    """Quotes, braces, newlines and </script> in a string input reach the server unchanged."""
    hostile = 'say "hi" {a|b} \n</script><img src=x onerror=alert(1)> ünïcødé 🎨 \\ %s'
    graph = graphs.solid(graphs.unique("hostile"))
    graph["4"] = {"class_type": "PreviewAny", "inputs": {"source": hostile}}

    async with ComfyClient(comfy_server.url) as comfy:
        result = await comfy.run(load_workflow(graph))
        entry = await comfy.get_history(result.prompt_id)

    assert entry is not None
    assert entry.outputs["4"]["text"] == [hostile]
