"""UI-format (editor) workflows to API format, for the server whose `/object_info` is given.

Behaviour follows the frontend's `graphToPrompt` (`comfyui-protocol.md` §5 items 1-8): links
are resolved lazily through reroutes, primitives, bypassed nodes and subgraph boundaries.
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from comfybatch.comfy.graph import is_link, node_sort_key
from comfybatch.comfy.object_info import CONTROL_AFTER_GENERATE_VALUES, InputSpec, ObjectInfo
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import NodeProblem, WorkflowFormatError

_MUTED, _BYPASSED = 2, 4
_SUBGRAPH_INPUT, _SUBGRAPH_OUTPUT = "-10", "-20"  # ids of a subgraph's boundary proxies
_NOTES = frozenset({"Note", "MarkdownNote"})
_UI_ONLY = _NOTES | {"PrimitiveNode", "Reroute", "GetNode", "SetNode"}
_UPLOAD_BUTTON_VALUES = frozenset({"image", "video", "audio", "upload"})
_MAX_DEPTH = 10  # subgraph nesting
_MAX_HOPS = 200  # reroute/bypass/boundary hops per link, against cycles (recursion stays well under 1000)


@dataclass(frozen=True)
class _Link:
    origin_id: str
    origin_slot: int
    target_id: str
    target_slot: int


@dataclass(frozen=True)
class _Value:
    """A literal that replaces a link (a PrimitiveNode's value, a subgraph's promoted widget)."""

    value: Any


_Resolved = tuple[str, int] | _Value | None


@dataclass
class _Graph:
    """The root workflow or one subgraph definition."""

    nodes: dict[str, dict[str, Any]]
    links: dict[str, _Link]
    definition: Mapping[str, Any]


@dataclass(frozen=True, eq=False)
class _Ref:
    """A UI node placed in the flattened graph under its execution id (`"<outer>:<inner>"`)."""

    exec_id: str
    node: dict[str, Any]
    graph: _Graph
    parent: "_Ref | None"

    @property
    def slots(self) -> list[dict[str, Any]]:
        inputs = self.node.get("inputs")
        return [s if isinstance(s, dict) else {} for s in inputs] if isinstance(inputs, list) else []

    @property
    def mode(self) -> int:
        mode = self.node.get("mode", 0)
        return mode if isinstance(mode, int) else 0


def ui_to_api(ui: Mapping[str, Any], object_info: ObjectInfo) -> ApiWorkflow:
    """Convert an editor save (UI format) into the API format that `POST /prompt` runs.

    Raises:
        WorkflowFormatError: malformed UI JSON, or node classes this server lacks (each listed as
            a `missing_node_type` problem).
    """
    return _Converter(ui, object_info).convert()


class _Converter:
    def __init__(self, ui: Mapping[str, Any], object_info: ObjectInfo) -> None:
        if not isinstance(ui.get("nodes"), list):
            raise WorkflowFormatError("UI-format workflow has no 'nodes' list")
        self.info = object_info
        self.defs: dict[str, Mapping[str, Any]] = {}
        _collect_definitions(ui, self.defs)
        self.graphs: dict[str, _Graph] = {}
        self.refs: dict[str, _Ref] = {}
        self._place(_graph(ui, "workflow"), "", None, 0)

    def convert(self) -> ApiWorkflow:
        emitted: dict[str, dict[str, Any]] = {}
        missing: list[NodeProblem] = []
        for exec_id in sorted(self.refs, key=node_sort_key):
            ref = self.refs[exec_id]
            kind = ref.node.get("type")
            if ref.mode in (_MUTED, _BYPASSED) or kind in _UI_ONLY or kind in self.defs:
                continue
            if not isinstance(kind, str) or not self.info.has_class(kind):
                missing.append(_missing(exec_id, kind))
                continue
            emitted[exec_id] = self._api_node(ref, kind)
        if missing:
            raise WorkflowFormatError("the workflow uses node types this server does not have", problems=tuple(missing))
        for node in emitted.values():  # graphToPrompt's last pass: drop links to nodes not emitted
            node["inputs"] = {k: v for k, v in node["inputs"].items() if not is_link(v) or v[0] in emitted}
        if not emitted:
            raise WorkflowFormatError("the UI workflow has no executable nodes (all muted, bypassed or notes)")
        return ApiWorkflow(emitted)

    def _place(self, graph: _Graph, prefix: str, parent: _Ref | None, depth: int) -> None:
        for local_id, node in graph.nodes.items():
            ref = _Ref(f"{prefix}{local_id}", node, graph, parent)
            self.refs[ref.exec_id] = ref
            kind = node.get("type")
            if isinstance(kind, str) and kind in self.defs and ref.mode not in (_MUTED, _BYPASSED):
                if depth >= _MAX_DEPTH:
                    raise WorkflowFormatError(f"subgraphs nested more than {_MAX_DEPTH} deep at node {ref.exec_id}")
                self._place(self._subgraph(kind), f"{ref.exec_id}:", ref, depth + 1)

    def _subgraph(self, subgraph_id: str) -> _Graph:
        if subgraph_id not in self.graphs:
            self.graphs[subgraph_id] = _graph(self.defs[subgraph_id], f"subgraph {subgraph_id}")
        return self.graphs[subgraph_id]

    def _api_node(self, ref: _Ref, class_type: str) -> dict[str, Any]:
        cls = self.info.node_class(class_type)
        inputs = {name: _wrap(value) for name, value in _map_widgets(cls.widget_inputs, ref.node).items()}
        for index, slot in enumerate(ref.slots):
            if slot.get("link") is None:
                continue
            widget = slot.get("widget")
            name = widget.get("name") if isinstance(widget, dict) and widget.get("name") else slot.get("name")
            resolved = self._input(ref, index, slot.get("type"), 0)
            if isinstance(resolved, _Value):
                inputs[str(name)] = _wrap(resolved.value)
            elif resolved is not None:
                inputs[str(name)] = [resolved[0], resolved[1]]
            # unresolved (muted source, nothing connected upstream): a widget keeps its stale value
        title = ref.node.get("title") if isinstance(ref.node.get("title"), str) else cls.display_name or class_type
        return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}

    def _input(self, ref: _Ref, index: int, want: Any, hops: int) -> _Resolved:
        """What input slot `index` of `ref` is fed by."""
        slots = ref.slots
        if index >= len(slots) or slots[index].get("link") is None:
            return None
        link = ref.graph.links.get(str(slots[index]["link"]))
        if link is None:
            return None
        if link.origin_id == _SUBGRAPH_INPUT:
            return self._boundary_input(ref.parent, link.origin_slot, want, hops) if ref.parent else None
        origin = self.refs.get(_sibling_id(ref, link.origin_id))
        if origin is None:
            return None
        return self._output(origin, link.origin_slot, want or slots[index].get("type"), hops + 1)

    def _output(self, ref: _Ref, slot: int, want: Any, hops: int) -> _Resolved:
        """The real producer behind output `slot` of `ref`, or a literal."""
        if hops > _MAX_HOPS:
            raise WorkflowFormatError(f"link cycle through node {ref.exec_id}")
        kind = ref.node.get("type")
        if ref.mode == _MUTED or kind in _NOTES:
            return None
        if ref.mode == _BYPASSED:
            index = _bypass_slot(ref, slot, want)
            return None if index is None else self._input(ref, index, want, hops)
        if kind == "PrimitiveNode":  # UI-only: its value is inlined into every target
            values = ref.node.get("widgets_values")
            return _Value(values[0]) if isinstance(values, list) and values else None
        if kind == "Reroute":
            return self._input(ref, 0, want, hops)
        if kind == "GetNode":
            setter = self._setter(ref)
            return None if setter is None else self._input(setter, 0, want, hops)
        if isinstance(kind, str) and kind in self.defs:
            return self._subgraph_output(ref, slot, want, hops)
        return (ref.exec_id, slot)

    def _boundary_input(self, instance: _Ref, index: int, want: Any, hops: int) -> _Resolved:
        """Subgraph input `index`, seen from inside: the instance's input link, or its promoted widget."""
        declared = _list(self._subgraph(str(instance.node["type"])).definition.get("inputs"))
        name = declared[index].get("name") if index < len(declared) and isinstance(declared[index], dict) else None
        slots = instance.slots
        slot = next((i for i, s in enumerate(slots) if name is not None and s.get("name") == name), index)
        if (resolved := self._input(instance, slot, want, hops)) is not None:
            return resolved
        widget_slots = [i for i, s in enumerate(slots) if s.get("widget")]
        values = instance.node.get("widgets_values")
        if slot in widget_slots and isinstance(values, list) and widget_slots.index(slot) < len(values):
            return _Value(values[widget_slots.index(slot)])
        return None  # the inner node keeps its own widget value

    def _subgraph_output(self, instance: _Ref, slot: int, want: Any, hops: int) -> _Resolved:
        graph = self._subgraph(str(instance.node["type"]))
        outputs = _list(graph.definition.get("outputs"))
        link_ids = outputs[slot].get("linkIds") if slot < len(outputs) and isinstance(outputs[slot], dict) else None
        candidates = [graph.links.get(str(i)) for i in link_ids] if isinstance(link_ids, list) else []
        candidates += [lk for lk in graph.links.values() if lk.target_id == _SUBGRAPH_OUTPUT and lk.target_slot == slot]
        link = next((lk for lk in candidates if lk is not None), None)
        if link is None:
            return None
        if link.origin_id == _SUBGRAPH_INPUT:  # passed straight through
            return self._boundary_input(instance, link.origin_slot, want, hops)
        inner = self.refs.get(f"{instance.exec_id}:{link.origin_id}")
        return None if inner is None else self._output(inner, link.origin_slot, want, hops + 1)

    def _setter(self, getter: _Ref) -> _Ref | None:
        name = _first_value(getter.node)
        return next(
            (r for r in self.refs.values() if r.node.get("type") == "SetNode" and _first_value(r.node) == name),
            None,
        )


def _map_widgets(widgets: tuple[InputSpec, ...], node: Mapping[str, Any]) -> dict[str, Any]:
    """Map `widgets_values` onto widget inputs (§5 items 1-3); absent ones get their default."""
    values = node.get("widgets_values")
    if isinstance(values, Mapping):  # some extensions save widgets by name
        mapped = {spec.name: values[spec.name] for spec in widgets if spec.name in values}
    else:
        mapped = _map_positional(widgets, values if isinstance(values, list) else [])
    for spec in widgets:
        if spec.name not in mapped:
            if spec.default is not None:
                mapped[spec.name] = spec.default
            elif spec.choices:  # the frontend shows a combo's first option
                mapped[spec.name] = spec.choices[0]
    return mapped


def _map_positional(widgets: tuple[InputSpec, ...], values: list[Any]) -> dict[str, Any]:
    mapped: dict[str, Any] = {}
    position = 0
    for index, spec in enumerate(widgets):
        if position >= len(values):
            break
        mapped[spec.name] = values[position]
        position += 1
        following = widgets[index + 1] if index + 1 < len(widgets) else None
        if position >= len(values):
            break
        extra = values[position]
        if spec.has_control_after_generate and extra in CONTROL_AFTER_GENERATE_VALUES:
            # …unless it is really the next combo's value and no control value was saved (old files).
            fits_next = following is not None and following.choices is not None and extra in following.choices
            if not (fits_next and len(values) - position == len(widgets) - index - 1):
                position += 1
        elif (
            spec.has_upload
            and extra in _UPLOAD_BUTTON_VALUES
            and (following is None or (following.choices is not None and extra not in following.choices))
        ):
            position += 1  # the upload button's value (usually last) before a widget it cannot fit
    return mapped


def _bypass_slot(ref: _Ref, slot: int, want: Any) -> int | None:
    """The input a bypassed node passes to output `slot`: same index, exact type, then compatible."""
    slots = ref.slots
    outputs = _list(ref.node.get("outputs"))
    out_type = outputs[slot].get("type") if slot < len(outputs) and isinstance(outputs[slot], dict) else want
    if _is_any(want):
        candidates = [slot, 0]
    else:
        same = [slot] if slot < len(slots) and _fits(slots[slot].get("type"), out_type, want) else []
        exact = [i for i, s in enumerate(slots) if s.get("type") == want]
        compatible = [i for i, s in enumerate(slots) if _fits(s.get("type"), out_type, want)]
        candidates = same + exact + compatible
    return next((i for i in candidates if i < len(slots) and slots[i].get("link") is not None), None)


def _fits(slot_type: Any, out_type: Any, want: Any) -> bool:
    return _compatible(slot_type, out_type) and _compatible(slot_type, want)


def _compatible(a: Any, b: Any) -> bool:
    """LiteGraph.isValidConnection: wildcards, equal types, or overlapping `A,B` lists."""
    if _is_any(a) or _is_any(b):
        return True
    left = {t.strip().upper() for t in str(a).split(",")}
    return bool(left & {t.strip().upper() for t in str(b).split(",")})


def _is_any(slot_type: Any) -> bool:
    return slot_type in ("*", "", 0, None)


def _graph(raw: Mapping[str, Any], where: str) -> _Graph:
    nodes: dict[str, dict[str, Any]] = {}
    for index, node in enumerate(_list(raw.get("nodes"))):
        if not isinstance(node, dict) or node.get("id") is None:
            raise WorkflowFormatError(f"{where}: entry {index} of 'nodes' is not a node with an id")
        if not isinstance(node.get("type"), str):
            raise WorkflowFormatError(f"{where}: node {node['id']} has no type")
        nodes[str(node["id"])] = node
    return _Graph(nodes, _links(raw.get("links"), where), raw)


def _links(raw: Any, where: str) -> dict[str, _Link]:
    """Links as `[id, from, from_slot, to, to_slot, type]` arrays or as objects (a list or a dict)."""
    entries = list(raw.values()) if isinstance(raw, Mapping) else _list(raw)
    links: dict[str, _Link] = {}
    for entry in entries:
        try:
            if isinstance(entry, list | tuple):
                link_id, origin, origin_slot, target, target_slot = entry[:5]
            elif isinstance(entry, Mapping):
                link_id, origin, origin_slot = entry["id"], entry["origin_id"], entry["origin_slot"]
                target, target_slot = entry["target_id"], entry["target_slot"]
            else:
                raise TypeError(type(entry).__name__)
            links[str(link_id)] = _Link(str(origin), int(origin_slot), str(target), int(target_slot))
        except (KeyError, TypeError, ValueError) as exc:
            raise WorkflowFormatError(f"{where}: malformed link {entry!r} ({exc})") from exc
    return links


def _collect_definitions(raw: Mapping[str, Any], into: dict[str, Mapping[str, Any]]) -> None:
    definitions = raw.get("definitions")
    subgraphs = definitions.get("subgraphs") if isinstance(definitions, Mapping) else None
    for sub in _list(subgraphs):
        if isinstance(sub, Mapping) and isinstance(sub.get("id"), str) and sub["id"] not in into:
            into[sub["id"]] = sub
            _collect_definitions(sub, into)


def _missing(exec_id: str, kind: Any) -> NodeProblem:
    if isinstance(kind, str) and kind.startswith(("workflow>", "workflow/")):
        message = f"legacy group node {kind!r} is not supported: convert it to a subgraph in the editor"
        return NodeProblem(exec_id, message, class_type=kind, kind="unsupported_group_node")
    message = f"node type {kind!r} is not in this server's /object_info"
    return NodeProblem(exec_id, message, class_type=str(kind), kind="missing_node_type")


def _sibling_id(ref: _Ref, local_id: str) -> str:
    return f"{ref.parent.exec_id}:{local_id}" if ref.parent else local_id


def _first_value(node: Mapping[str, Any]) -> Any:
    values = node.get("widgets_values")
    return values[0] if isinstance(values, list) and values else None


def _wrap(value: Any) -> Any:
    """graphToPrompt: a list widget value is sent as `{"__value__": [...]}` (a bare list is a link)."""
    return {"__value__": value} if isinstance(value, list) else value


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []
