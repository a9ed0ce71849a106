"""ui_to_api: the UI fixtures (each executed on a real 0.3.75 server) and synthetic corner cases."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from comfybatch.comfy.convert import ui_to_api
from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow
from comfybatch.errors import WorkflowFormatError

FIXTURES = Path(__file__).parents[1] / "fixtures"
UI = FIXTURES / "ui"


@pytest.fixture(scope="module")
def info() -> ObjectInfo:
    return ObjectInfo.from_file(FIXTURES / "object_info_0.3.75.json")


def convert(name: str, info: ObjectInfo) -> dict[str, dict[str, Any]]:
    return ui_to_api(json.loads((UI / name).read_text()), info).nodes


def node(
    node_id: int, kind: str, inputs: Sequence[Any] = (), outputs: Sequence[Any] = (), widgets: Any = None, mode: int = 0
) -> dict[str, Any]:
    found: dict[str, Any] = {
        "id": node_id,
        "type": kind,
        "mode": mode,
        "inputs": list(inputs),
        "outputs": list(outputs),
    }
    return found if widgets is None else {**found, "widgets_values": widgets}


def slot(name: str, kind: str, link: int | None = None) -> dict[str, Any]:
    return {"name": name, "type": kind, "link": link}


def ui(nodes: list[dict[str, Any]], links: list[list[Any]]) -> dict[str, Any]:
    return {"nodes": nodes, "links": links, "version": 0.4}


def test_ui_to_api_primitive_node_value_is_inlined(info: ObjectInfo) -> None:
    """A PrimitiveNode is UI-only: its value replaces the link, and the node is not emitted."""
    nodes = convert("primitives.json", info)

    assert (nodes["3"]["inputs"]["width"], nodes["5"]["inputs"]["filename_prefix"], "1" in nodes) == (
        96,
        "comfybatch-fixtures/primitives",
        False,
    )


def test_ui_to_api_primitive_int_stays_a_linked_node(info: ObjectInfo) -> None:
    """PrimitiveInt is a real node: it stays, linked, with its control value skipped."""
    nodes = convert("primitives.json", info)

    assert (nodes["3"]["inputs"]["height"], nodes["2"]["inputs"]) == (["2", 0], {"value": 64})


def test_ui_to_api_converted_widgets_keep_value_positions(info: ObjectInfo) -> None:
    """Linked widget slots take the link while their stale values still occupy their positions."""
    inputs = convert("primitives.json", info)["3"]["inputs"]

    assert (inputs["batch_size"], inputs["color"]) == (2, 16711680)


def test_ui_to_api_modern_combo_widget_is_mapped(info: ObjectInfo) -> None:
    """A `["COMBO", {options}]` widget maps like any other (CaseConverter.mode)."""
    assert convert("primitives.json", info)["8"]["inputs"] == {"string": ["7", 0], "mode": "UPPERCASE"}


def test_ui_to_api_reroutes_are_followed(info: ObjectInfo) -> None:
    """A chain of Reroutes with fan-out resolves to the real source."""
    nodes = convert("reroute_notes.json", info)

    assert (nodes["4"]["inputs"]["image"], nodes["8"]["inputs"]["images"]) == (["1", 0], ["1", 0])


def test_ui_to_api_notes_and_reroutes_are_not_emitted(info: ObjectInfo) -> None:
    """Note, MarkdownNote and Reroute nodes are dropped."""
    assert sorted(convert("reroute_notes.json", info)) == ["1", "4", "5", "8"]


def test_ui_to_api_control_after_generate_value_is_skipped(info: ObjectInfo) -> None:
    """`[123456, "randomize", 0.25]` maps to seed and strength; "randomize" is not an input."""
    assert convert("seed_control.json", info)["2"]["inputs"] == {"seed": 123456, "strength": 0.25, "image": ["1", 0]}


def test_ui_to_api_upload_button_value_is_skipped(info: ObjectInfo) -> None:
    """LoadImage's trailing "image" (the upload button) is not mapped to any input."""
    nodes = convert("load_image.json", info)

    assert (nodes["1"]["inputs"], nodes["4"]["inputs"]) == (
        {"image": "comfybatch-red.png"},
        {"image": "comfybatch-red.png", "channel": "red"},
    )


def test_ui_to_api_bypassed_node_is_rewired(info: ObjectInfo) -> None:
    """A bypassed ImageInvert disappears and its consumer reads the invert's input."""
    nodes = convert("muted_bypassed.json", info)

    assert ("2" not in nodes, nodes["3"]["inputs"]["image"]) == (True, ["1", 0])


def test_ui_to_api_muted_nodes_and_their_links_are_dropped(info: ObjectInfo) -> None:
    """Muted nodes are not emitted, and an input fed by one is left out."""
    nodes = convert("muted_bypassed.json", info)

    assert (sorted(nodes), "image2" in nodes["7"]["inputs"]) == (["1", "3", "4", "7", "8"], False)


def test_ui_to_api_subgraph_inner_ids_are_prefixed(info: ObjectInfo) -> None:
    """Subgraph instances expand recursively to `<outer>:<inner>` ids."""
    assert sorted(convert("subgraph.json", info)) == ["1", "10:1", "10:2:1", "10:3", "11", "12:1", "13"]


def test_ui_to_api_subgraph_boundary_links_are_mapped(info: ObjectInfo) -> None:
    """Links through the -10/-20 proxies connect outer and inner nodes across two levels."""
    nodes = convert("subgraph.json", info)

    links = [nodes[n]["inputs"][i] for n, i in (("10:1", "image"), ("10:2:1", "image"), ("11", "images"))]

    assert links == [["1", 0], ["10:1", 0], ["10:2:1", 0]]


def test_ui_to_api_subgraph_promoted_widget_value_applies(info: ObjectInfo) -> None:
    """The instance's widget value for an unlinked subgraph input overrides the inner widget."""
    assert convert("subgraph.json", info)["10:1"]["inputs"]["blur_radius"] == 5


def test_ui_to_api_object_form_links(info: ObjectInfo) -> None:
    """Schema-1 files with links as objects convert like link arrays."""
    nodes = convert("object_links.json", info)

    assert (nodes["3"]["inputs"], nodes["6"]["inputs"]) == (
        {"rotation": "90 degrees", "image": ["2", 0]},
        {"source": ["5", 0]},
    )


def test_ui_to_api_titles_become_meta(info: ObjectInfo) -> None:
    """A node's title (or else the class display name) becomes `_meta.title`."""
    nodes = convert("primitives.json", info)

    assert (nodes["5"]["_meta"], nodes["4"]["_meta"]) == ({"title": "Save inverted"}, {"title": "Invert Image"})


@pytest.mark.parametrize("fixture", sorted(p.name for p in UI.glob("*.json")))
def test_ui_to_api_fixtures_pass_preflight(info: ObjectInfo, fixture: str) -> None:
    """Every converted fixture is clean by preflight (they all ran on a real 0.3.75)."""
    assert check_workflow(load_workflow(UI / fixture, info), info) == []


def test_ui_to_api_unknown_type_names_node_and_type(info: ObjectInfo) -> None:
    """A class the server lacks fails with the node id and type, as a missing_node_type problem."""
    graph = ui([node(1, "EmptyImage", widgets=[8, 8, 1, 0]), node(4, "FancyUpscaler", widgets=[2])], [])

    with pytest.raises(WorkflowFormatError, match=r"node 4.*'FancyUpscaler'") as caught:
        ui_to_api(graph, info)

    assert [p.kind for p in caught.value.problems] == ["missing_node_type"]


def test_ui_to_api_legacy_group_node_is_explained(info: ObjectInfo) -> None:
    """Legacy group nodes get a message pointing at subgraphs."""
    with pytest.raises(WorkflowFormatError, match="convert it to a subgraph"):
        ui_to_api(ui([node(1, "workflow>My group")], []), info)


def test_ui_to_api_muted_unknown_node_is_ignored(info: ObjectInfo) -> None:
    """A muted node is dropped before its class is looked up."""
    graph = ui([node(1, "EmptyImage", widgets=[8, 8, 1, 0]), node(2, "FancyUpscaler", mode=2)], [])

    assert sorted(ui_to_api(graph, info).nodes) == ["1"]


def test_ui_to_api_bypass_prefers_a_type_compatible_input(info: ObjectInfo) -> None:
    """A bypassed node whose same-index input has the wrong type passes its first matching input."""
    graph = ui(
        [
            node(1, "SolidMask", outputs=[slot("MASK", "MASK")], widgets=[1.0, 8, 8]),
            node(2, "EmptyImage", outputs=[slot("IMAGE", "IMAGE")], widgets=[8, 8, 1, 0]),
            node(
                3,
                "JoinImageWithAlpha",
                [slot("alpha", "MASK", 1), slot("image", "IMAGE", 2)],
                [slot("IMAGE", "IMAGE")],
                mode=4,
            ),
            node(4, "PreviewImage", [slot("images", "IMAGE", 3)]),
        ],
        [[1, 1, 0, 3, 0, "MASK"], [2, 2, 0, 3, 1, "IMAGE"], [3, 3, 0, 4, 0, "IMAGE"]],
    )

    assert ui_to_api(graph, info).nodes["4"]["inputs"] == {"images": ["2", 0]}


def test_ui_to_api_bypass_without_matching_input_drops_the_link(info: ObjectInfo) -> None:
    """With no type-compatible linked input the consumer's input is left out."""
    graph = ui(
        [
            node(1, "SolidMask", outputs=[slot("MASK", "MASK")], widgets=[1.0, 8, 8]),
            node(2, "MaskToImage", [slot("mask", "MASK", 1)], [slot("IMAGE", "IMAGE")], mode=4),
            node(3, "PreviewImage", [slot("images", "IMAGE", 2)]),
        ],
        [[1, 1, 0, 2, 0, "MASK"], [2, 2, 0, 3, 0, "IMAGE"]],
    )

    assert ui_to_api(graph, info).nodes["3"]["inputs"] == {}


def test_ui_to_api_implicit_seed_control_value_is_skipped() -> None:
    """A `seed` INT without the spec flag still has its control value skipped."""
    info = ObjectInfo({"Noise": {"input": {"required": {"seed": ["INT", {}], "amount": ["FLOAT", {}]}}, "output": []}})

    nodes = ui_to_api(ui([node(1, "Noise", widgets=[9, "fixed", 0.5])], []), info).nodes

    assert nodes["1"]["inputs"] == {"seed": 9, "amount": 0.5}


def test_ui_to_api_missing_widget_values_use_defaults(info: ObjectInfo) -> None:
    """Widgets with no saved value get the spec default, as the frontend would show."""
    nodes = ui_to_api(ui([node(1, "EmptyImage", widgets=[64])], []), info).nodes

    assert nodes["1"]["inputs"] == {"width": 64, "height": 512, "batch_size": 1, "color": 0}


def test_ui_to_api_list_widget_value_is_wrapped() -> None:
    """A list widget value is wrapped in `__value__` so it is not read as a link."""
    info = ObjectInfo({"Pick": {"input": {"required": {"items": ["STRING", {}]}}, "output": []}})

    nodes = ui_to_api(ui([node(1, "Pick", widgets=[["a", "b"]])], []), info).nodes

    assert nodes["1"]["inputs"] == {"items": {"__value__": ["a", "b"]}}


def test_ui_to_api_get_and_set_nodes_are_followed(info: ObjectInfo) -> None:
    """A GetNode reads the link its same-named SetNode receives."""
    graph = ui(
        [
            node(1, "EmptyImage", outputs=[slot("IMAGE", "IMAGE")], widgets=[8, 8, 1, 0]),
            node(2, "SetNode", [slot("IMAGE", "IMAGE", 1)], widgets=["img"]),
            node(3, "GetNode", outputs=[slot("IMAGE", "IMAGE")], widgets=["img"]),
            node(4, "PreviewImage", [slot("images", "IMAGE", 2)]),
        ],
        [[1, 1, 0, 2, 0, "IMAGE"], [2, 3, 0, 4, 0, "IMAGE"]],
    )

    assert ui_to_api(graph, info).nodes["4"]["inputs"] == {"images": ["1", 0]}


def test_ui_to_api_reroute_cycle_is_an_error(info: ObjectInfo) -> None:
    """A cycle of Reroutes is reported instead of recursing forever."""
    graph = ui(
        [
            node(1, "Reroute", [slot("", "*", 2)], [slot("", "IMAGE")]),
            node(2, "Reroute", [slot("", "*", 1)], [slot("", "IMAGE")]),
            node(3, "PreviewImage", [slot("images", "IMAGE", 3)]),
        ],
        [[1, 1, 0, 2, 0, "*"], [2, 2, 0, 1, 0, "*"], [3, 1, 0, 3, 0, "IMAGE"]],
    )

    with pytest.raises(WorkflowFormatError, match="link cycle"):
        ui_to_api(graph, info)


def test_ui_to_api_malformed_link_is_an_error(info: ObjectInfo) -> None:
    """A link entry that is neither an array nor an object is rejected."""
    with pytest.raises(WorkflowFormatError, match="malformed link"):
        ui_to_api(ui([node(1, "EmptyImage", widgets=[8, 8, 1, 0])], [[1, "x"]]), info)


def subgraph_ui(inner: list[dict[str, Any]], links: list[dict[str, Any]], outer_inputs: list[Any]) -> dict[str, Any]:
    """One subgraph (input "image", widget input "radius", output "out") used by instance 5."""
    sub_id = "00000000-0000-4000-8000-000000000001"
    definition = {
        "id": sub_id,
        "nodes": inner,
        "links": links,
        "inputs": [{"name": "image", "type": "IMAGE"}, {"name": "radius", "type": "INT"}],
        "outputs": [{"name": "out", "type": "IMAGE"}],
    }
    nodes = [
        node(1, "EmptyImage", outputs=[slot("IMAGE", "IMAGE")], widgets=[8, 8, 1, 0]),
        node(5, sub_id, outer_inputs, [slot("out", "IMAGE")]),
        node(6, "PreviewImage", [slot("images", "IMAGE", 2)]),
    ]
    graph = ui(nodes, [[1, 1, 0, 5, 0, "IMAGE"], [2, 5, 0, 6, 0, "IMAGE"]])
    return {**graph, "definitions": {"subgraphs": [definition]}}


def olink(link_id: int, origin: int, origin_slot: int, target: int, target_slot: int) -> dict[str, Any]:
    return {
        "id": link_id,
        "origin_id": origin,
        "origin_slot": origin_slot,
        "target_id": target,
        "target_slot": target_slot,
    }


def test_ui_to_api_subgraph_unlinked_input_keeps_inner_widget_value(info: ObjectInfo) -> None:
    """An unlinked subgraph input without a promoted value leaves the inner widget's own value."""
    blur = node(1, "ImageBlur", [slot("image", "IMAGE", 1), slot("blur_radius", "INT", 2)], widgets=[7, 1.0])
    graph = subgraph_ui(
        [blur],
        [olink(1, -10, 0, 1, 0), olink(2, -10, 1, 1, 1), olink(3, 1, 0, -20, 0)],
        [slot("image", "IMAGE", 1), slot("radius", "INT")],
    )

    assert ui_to_api(graph, info).nodes["5:1"]["inputs"] == {"blur_radius": 7, "sigma": 1.0, "image": ["1", 0]}


def test_ui_to_api_subgraph_passthrough_output_links_outer_source(info: ObjectInfo) -> None:
    """A subgraph output wired straight to a subgraph input resolves to the outer source."""
    graph = subgraph_ui([], [olink(1, -10, 0, -20, 0)], [slot("image", "IMAGE", 1)])

    assert ui_to_api(graph, info).nodes["6"]["inputs"] == {"images": ["1", 0]}


def test_ui_to_api_widgets_saved_by_name_are_mapped(info: ObjectInfo) -> None:
    """Some extensions save `widgets_values` as an object keyed by widget name."""
    values = {"width": 16, "height": 8, "batch_size": 2, "color": 5}

    assert ui_to_api(ui([node(1, "EmptyImage", widgets=values)], []), info).nodes["1"]["inputs"] == values


def test_ui_to_api_missing_combo_value_takes_first_option(info: ObjectInfo) -> None:
    """A combo with no saved value and no default gets its first option, as the frontend shows."""
    nodes = ui_to_api(ui([node(1, "ImageRotate", [slot("image", "IMAGE")])], []), info).nodes

    assert nodes["1"]["inputs"] == {"rotation": "none"}


def test_ui_to_api_only_notes_is_an_error(info: ObjectInfo) -> None:
    """A UI workflow with nothing executable is rejected."""
    with pytest.raises(WorkflowFormatError, match="no executable nodes"):
        ui_to_api(ui([node(1, "Note", widgets=["hi"])], []), info)
