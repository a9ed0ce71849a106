"""The shared graph rules of `comfy/graph.py` and the import order of the `comfy/` modules."""

import subprocess
import sys

import pytest

from comfybatch.comfy.graph import is_link, node_sort_key
from comfybatch.comfy.rejection import classify_rejection, node_problems
from comfybatch.comfy.workflow import ApiWorkflow

SUBGRAPH_IDS = ["10", "5:10", "-", "5", "9", "5:9", "abc"]
NUMERIC_ORDER = ["5", "5:9", "5:10", "9", "10", "-", "abc"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [(["4", 0], True), (["4", True], False), (["4", "0"], False), ([4, 0], False), (["4", 0, 1], False),
     ({"__value__": ["4", 0]}, False), ("4", False)],
)  # fmt: skip
def test_is_link_accepts_only_node_id_and_int_index(value: object, expected: bool) -> None:
    """A link is exactly a string node id and an int output index (a bool is no index)."""
    assert is_link(value) is expected


def test_node_sort_key_orders_every_id_part_numerically() -> None:
    """Subgraph ids follow their parent, `5:9` comes before `5:10`, and non-numeric ids come last."""
    assert sorted(SUBGRAPH_IDS, key=node_sort_key) == NUMERIC_ORDER


def test_node_problems_list_nodes_in_the_workflow_order() -> None:
    """A server's node_errors are reported in the same order `ApiWorkflow.node_ids` lists the nodes."""
    node_errors = {nid: {"class_type": "X", "errors": [{"type": "bad", "message": "m"}]} for nid in SUBGRAPH_IDS}
    workflow = ApiWorkflow({nid: {"class_type": "X", "inputs": {}} for nid in SUBGRAPH_IDS})

    problems = node_problems(node_errors)

    assert [p.node_id for p in problems] == workflow.node_ids == NUMERIC_ORDER


def test_missing_node_classes_are_listed_in_numeric_order() -> None:
    """Node classes absent from a server are named node by node, `5:9` before `5:10`."""
    body = {"error": {"type": "invalid_prompt", "message": "bad"}, "node_errors": {}}

    error = classify_rejection(body, server="a", missing_nodes={"5:10": "B", "5:9": "A", "10": "C"})

    assert error is not None
    assert [p.node_id for p in error.problems] == ["5:9", "5:10", "10"]


@pytest.mark.parametrize(
    ("modules", "absent"),
    [(["workflow", "convert", "client"], []), (["convert", "workflow", "client"], []),
     (["client", "convert", "workflow"], []), (["workflow"], ["convert", "intake"]), (["follow"], ["client"])],
)  # fmt: skip
def test_comfy_modules_import_in_any_order_without_cycles(modules: list[str], absent: list[str]) -> None:
    """In a fresh interpreter each order imports; `workflow` needs no `convert`, `follow` no `client`."""
    imports = "".join(f"import comfybatch.comfy.{name};" for name in modules)
    check = "".join(f"assert 'comfybatch.comfy.{name}' not in sys.modules, '{name}';" for name in absent)

    done = subprocess.run([sys.executable, "-c", f"import sys;{imports}{check}"], capture_output=True, text=True)

    assert done.returncode == 0, done.stderr


def test_node_ids_with_non_ascii_digits_sort_as_names_not_errors() -> None:
    """"²" counts as a digit to `str.isdigit` but `int` refuses it: such an id sorts after the numbered ones."""
    assert sorted(["²", "10", "2"], key=node_sort_key) == ["2", "10", "²"]
