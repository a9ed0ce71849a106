"""check_workflow: the server's own validation kinds, from its cached /object_info."""

import json
from pathlib import Path
from typing import Any

import pytest

from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow, find_cycle, refuse_unsafe, split_problems
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import NodeProblem, WorkflowRejected

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
        "Fancy Image (node 1): node class 'FancyImage' is not installed on this server"
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


def load_image(path: str, class_type: str = "LoadImage") -> dict[str, dict[str, Any]]:
    """The graph of issue 10: a LoadImage whose `image` names `path`, saved as it is."""
    return {
        "1": {"class_type": class_type, "inputs": {"image": path}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "t"}},
    }


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("../../../../../../../srv/studio/contact_sheet.png", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("C:\\Windows\\win.ini", "names a drive"),
        ("\\\\fileserver\\share\\a.png", "absolute path"),
        ("..\\..\\secret.png", "'..' segment"),
        ("sub/../../secret.png", "'..' segment"),
        ("photo.png\x00.txt", "U+0000"),
    ],
)
def test_check_workflow_refuses_file_names_outside_the_folder(info: ObjectInfo, path: str, why: str) -> None:
    """LoadImage's `image` that leaves ComfyUI's input folder is WorkflowRejected naming node, class and input."""
    with pytest.raises(WorkflowRejected) as caught:
        check_workflow(ApiWorkflow(load_image(path)), info)

    [problem] = caught.value.problems
    assert (problem.node_id, problem.class_type, problem.input_name) == ("1", "LoadImage", "image")
    assert problem.kind == "file_outside_folder"
    assert why in str(caught.value)
    assert "Load Image (node 1), input 'image'" in str(caught.value)


@pytest.mark.parametrize("path", ["photo.png", "sub/photo.png", "sub\\photo.png", "photo.png [output]", "a..b.png"])
def test_check_workflow_accepts_file_names_inside_the_folder(info: ObjectInfo, path: str) -> None:
    """Subfolders, Windows separators and annotated names stay inside the folder and are not refused."""
    assert kinds(load_image(path), info) == []


def test_refuse_unsafe_uses_object_info_for_unknown_input_names(info: ObjectInfo) -> None:
    """A combo input (here LoadLatent's `latent`) counts as a file name because /object_info says so."""
    nodes = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "/etc/shadow"}}}

    with pytest.raises(WorkflowRejected, match=r"Load Latent \(node 1\), input 'latent'"):
        refuse_unsafe(ApiWorkflow(nodes), info)


def test_refuse_unsafe_leaves_text_inputs_alone(info: ObjectInfo) -> None:
    """A prompt may say '../' or '/etc/passwd': text inputs are not file names."""
    workflow = load_workflow(FIXTURES / "api" / "txt2img_tiny.json").bind({"prompt": "../../etc/passwd"})

    refuse_unsafe(workflow, info)
    refuse_unsafe(workflow)


def cyclic() -> dict[str, dict[str, Any]]:
    """Issue 10's graph: two KSamplers feeding each other's latent."""
    nodes: dict[str, dict[str, Any]] = json.loads((FIXTURES / "api" / "txt2img_tiny.json").read_text())
    nodes["8"] = {**nodes["5"], "inputs": {**nodes["5"]["inputs"], "latent_image": ["5", 0]}}
    nodes["5"]["inputs"]["latent_image"] = ["8", 0]
    return nodes


def test_find_cycle_names_the_nodes_of_the_cycle() -> None:
    """The two samplers that feed each other are the cycle; an acyclic graph has none."""
    assert sorted(find_cycle(cyclic()) or []) == ["5", "8"]
    assert find_cycle(json.loads((FIXTURES / "api" / "txt2img_tiny.json").read_text())) is None


def test_check_workflow_refuses_a_cycle(info: ObjectInfo) -> None:
    """A graph whose links form a cycle is WorkflowRejected naming its nodes, before any server sees it."""
    with pytest.raises(WorkflowRejected) as caught:
        check_workflow(ApiWorkflow(cyclic()), info)

    assert {p.node_id for p in caught.value.problems} == {"5", "8"}
    assert "cycle" in str(caught.value)
    assert "5 (KSampler)" in str(caught.value)
    assert "8 (KSampler)" in str(caught.value)


def test_find_cycle_self_link_and_long_chain() -> None:
    """A node linked to itself is a cycle of one; a 5,000-node chain is walked without recursion."""
    assert find_cycle({"1": {"class_type": "X", "inputs": {"a": ["1", 0]}}}) == ["1"]
    chain = {str(n): {"class_type": "X", "inputs": {"a": [str(n - 1), 0]} if n else {}} for n in range(5000)}
    assert find_cycle(chain) is None
