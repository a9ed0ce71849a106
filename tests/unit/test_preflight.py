"""check_workflow: the server's own validation kinds, from its cached /object_info."""

from pathlib import Path
from typing import Any

import pytest

from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow, split_problems
from comfybatch.comfy.workflow import ApiWorkflow, load_workflow
from comfybatch.errors import NodeProblem

FIXTURES = Path(__file__).parents[1] / "fixtures"


@pytest.fixture(scope="module")
def info() -> ObjectInfo:
    return ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")


def solid(**empty_image: Any) -> dict[str, dict[str, Any]]:
    inputs = {"width": 32, "height": 24, "batch_size": 1, "color": 0, **empty_image}
    return {
        "1": {"class_type": "EmptyImage", "inputs": inputs},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }


def kinds(nodes: dict[str, dict[str, Any]], info: ObjectInfo) -> list[tuple[str, str | None, str]]:
    return [(p.node_id, p.input_name, p.kind) for p in check_workflow(ApiWorkflow(nodes), info)]


def test_check_workflow_accepts_the_tiny_txt2img(info: ObjectInfo) -> None:
    """A valid graph (its checkpoint listed by the server) has no problems."""
    assert check_workflow(load_workflow(FIXTURES / "api" / "txt2img_tiny.json"), info) == []


def test_check_workflow_unknown_class_is_missing_node_type(info: ObjectInfo) -> None:
    """A class absent from /object_info is `missing_node_type`, naming the class."""
    nodes = solid()
    nodes["1"]["class_type"] = "FancyImage"

    assert [str(p) for p in check_workflow(ApiWorkflow(nodes), info)] == [
        "node 1 (FancyImage): node class 'FancyImage' is not installed on this server"
    ]


def test_check_workflow_without_output_node_is_prompt_no_outputs(info: ObjectInfo) -> None:
    """A graph with no output node is `prompt_no_outputs`."""
    nodes = solid()
    del nodes["2"]

    assert kinds(nodes, info) == [("-", None, "prompt_no_outputs")]


def test_check_workflow_missing_required_input(info: ObjectInfo) -> None:
    """A required input left out is `required_input_missing`."""
    nodes = solid()
    del nodes["1"]["inputs"]["height"]

    assert kinds(nodes, info) == [("1", "height", "required_input_missing")]


def test_check_workflow_link_to_absent_node(info: ObjectInfo) -> None:
    """A link to a node not in the graph is `bad_linked_input`."""
    nodes = solid()
    nodes["2"]["inputs"]["images"] = ["9", 0]

    assert kinds(nodes, info) == [("2", "images", "bad_linked_input")]


def test_check_workflow_link_to_out_of_range_slot(info: ObjectInfo) -> None:
    """A link to an output slot the source lacks is `bad_linked_input`."""
    nodes = solid()
    nodes["2"]["inputs"]["images"] = ["1", 1]

    assert kinds(nodes, info) == [("2", "images", "bad_linked_input")]


def test_check_workflow_list_of_wrong_length_is_bad_link(info: ObjectInfo) -> None:
    """A bare list that is not `[id, slot]` is `bad_linked_input` (the server reads lists as links)."""
    nodes = solid()
    nodes["2"]["inputs"]["filename_prefix"] = ["a", "b", "c"]

    assert kinds(nodes, info) == [("2", "filename_prefix", "bad_linked_input")]


def test_check_workflow_link_type_mismatch(info: ObjectInfo) -> None:
    """LATENT into SaveImage.images is `return_type_mismatch`."""
    nodes = solid()
    nodes["3"] = {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}}
    nodes["2"]["inputs"]["images"] = ["3", 0]

    assert kinds(nodes, info) == [("2", "images", "return_type_mismatch")]


def test_check_workflow_int_below_min(info: ObjectInfo) -> None:
    """0 for a min-1 width is `value_smaller_than_min`."""
    assert kinds(solid(width=0), info) == [("1", "width", "value_smaller_than_min")]


def test_check_workflow_int_above_max(info: ObjectInfo) -> None:
    """999999 for a max-16384 width is `value_bigger_than_max`."""
    assert kinds(solid(width=999999), info) == [("1", "width", "value_bigger_than_max")]


@pytest.mark.parametrize("value", ["64", 3.7, True])
def test_check_workflow_accepts_what_the_server_coerces(info: ObjectInfo, value: Any) -> None:
    """Values the server's int() accepts ("64", 3.7, true) are not problems."""
    assert kinds(solid(width=value), info) == []


@pytest.mark.parametrize("value", ["wide", None, {"a": 1}])
def test_check_workflow_unconvertible_value_is_invalid_input_type(info: ObjectInfo, value: Any) -> None:
    """A value int() cannot convert is `invalid_input_type`."""
    assert kinds(solid(width=value), info) == [("1", "width", "invalid_input_type")]


def test_check_workflow_checkpoint_missing_on_server_is_value_not_in_list(info: ObjectInfo) -> None:
    """A checkpoint the server does not list is `value_not_in_list`."""
    workflow = load_workflow(FIXTURES / "api" / "txt2img_tiny.json").bind({"checkpoint": "absent.safetensors"})

    assert [(p.node_id, p.kind) for p in check_workflow(workflow, info)] == [("1", "value_not_in_list")]


def test_check_workflow_modern_combo_is_not_checked(info: ObjectInfo) -> None:
    """0.3.75 does not check `["COMBO", {options}]` values, so neither does preflight."""
    nodes = solid()
    nodes["3"] = {"class_type": "ImageQuantize", "inputs": {"image": ["1", 0], "colors": 4, "dither": "nope"}}
    nodes["2"]["inputs"]["images"] = ["3", 0]

    assert kinds(nodes, info) == []


def test_check_workflow_upload_combo_is_not_checked(info: ObjectInfo) -> None:
    """LoadImage validates its own file (a fresh upload is not yet in the cached list)."""
    nodes = solid()
    nodes["3"] = {"class_type": "LoadImage", "inputs": {"image": "uploaded-after-caching.png"}}
    nodes["2"]["inputs"]["images"] = ["3", 0]

    assert kinds(nodes, info) == []


def test_check_workflow_unwraps_wrapped_values(info: ObjectInfo) -> None:
    """`{"__value__": ...}` is unwrapped before the checks, as on the server."""
    assert kinds(solid(width={"__value__": 0}), info) == [("1", "width", "value_smaller_than_min")]


def test_check_workflow_ignores_nodes_no_output_uses(info: ObjectInfo) -> None:
    """Like the server, inputs of nodes no output depends on are not validated."""
    nodes = solid()
    nodes["3"] = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 999, "sigma": 1.0}}

    assert kinds(nodes, info) == []


def test_split_problems_separates_server_lacks_from_workflow_wrong() -> None:
    """Missing classes and combo values go to `server_lacks`; the rest to `workflow_wrong`."""
    missing = NodeProblem("1", "absent", kind="missing_node_type")
    model = NodeProblem("2", "not listed", input_name="ckpt_name", kind="value_not_in_list")
    broken = NodeProblem("3", "missing", input_name="height", kind="required_input_missing")

    split = split_problems([missing, model, broken])

    assert (split.server_lacks, split.workflow_wrong) == ((missing, model), (broken,))
