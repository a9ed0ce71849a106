"""Which node classes a batch's probe asks each server about."""

import json

from comfybatch.flows.plan import template_classes
from comfybatch.models import TEMPLATES_DIR
from tests.support import graphs


def test_an_api_template_names_its_node_classes() -> None:
    """A shipped API-format template yields the class of every node it has."""
    graph = json.loads((TEMPLATES_DIR / "txt2img-tiny.json").read_text())

    assert template_classes("txt2img-tiny") == {node["class_type"] for node in graph.values()}


def test_an_inline_graph_names_its_node_classes() -> None:
    """An inline API graph yields its classes too."""
    graph = graphs.solid("x")

    assert template_classes(graph) == {node["class_type"] for node in graph.values()}


def test_a_ui_graph_or_an_unknown_template_asks_for_everything() -> None:
    """A UI-format graph (converted with the whole `/object_info`) and an unreadable source give None (full probe)."""
    ui_graph = {"nodes": [], "links": []}

    assert template_classes(ui_graph) is None
    assert template_classes("no-such-template") is None
