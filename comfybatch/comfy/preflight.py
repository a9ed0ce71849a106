"""Check an API workflow against a server's `/object_info` before queueing it.

Mirrors ComfyUI 0.3.75 `execution.py` `validate_prompt` / `validate_inputs`, coercions included,
so preflight never rejects what the server would accept.
"""

import re
from typing import Any, NamedTuple

from comfybatch.comfy.graph import is_link, node_sort_key
from comfybatch.comfy.object_info import InputSpec, ObjectInfo
from comfybatch.comfy.rejection import FILE_INPUTS, server_lacks
from comfybatch.comfy.rule import OutOfRange, check_bounds, spec_rule
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import NodeProblem, WorkflowRejected

GRAPH = "-"  # node_id of problems about the whole prompt (as in comfy/rejection.py)
# Inputs whose node validates them itself (VALIDATE_INPUTS), so the server skips its range/combo check.
_SELF_VALIDATED = frozenset(
    {("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadLatent", "latent"), ("LoadVideo", "file"),
     ("LoadAudio", "audio")}
)  # fmt: skip
_COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}
_FILE_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # no file name needs one; NUL truncates it in C calls
_DRIVE = re.compile(r"^[A-Za-z]:")


class ProblemSplit(NamedTuple):
    """Problems split by who must act: the server's owner, or the workflow's author."""

    server_lacks: tuple[NodeProblem, ...]  # raise ServerIncompatible: another server may have it
    workflow_wrong: tuple[NodeProblem, ...]  # raise WorkflowRejected: no server will run it


def check_workflow(workflow: ApiWorkflow, object_info: ObjectInfo) -> list[NodeProblem]:
    """Everything the server would reject in `workflow`, as `NodeProblem`s with ComfyUI's kinds.

    Kinds: `missing_node_type`, `prompt_no_outputs`, `required_input_missing`, `bad_linked_input`,
    `return_type_mismatch`, `invalid_input_type`, `value_smaller_than_min`, `value_bigger_than_max`,
    `value_not_in_list`. Like the server, inputs are checked only on nodes that outputs depend on.

    Raises:
        WorkflowRejected: the graph names a file outside ComfyUI's folders, or has a cycle
            (see `refuse_unsafe`): no server may run it.
    """
    refuse_unsafe(workflow, object_info)
    nodes = workflow.nodes
    missing = [
        NodeProblem(nid, f"node class {node['class_type']!r} is not installed on this server",
                    class_type=node["class_type"], kind="missing_node_type", title=title_of(node))
        for nid, node in _ordered(nodes) if not object_info.has_class(node["class_type"])
    ]  # fmt: skip
    if missing:  # the server stops at the first unknown class (invalid_prompt)
        return missing
    outputs = [nid for nid, node in _ordered(nodes) if object_info.is_output_node(node["class_type"])]
    if not outputs:
        return [NodeProblem(GRAPH, "the prompt has no output node (e.g. SaveImage)", kind="prompt_no_outputs")]
    problems: list[NodeProblem] = []
    for node_id in _ancestors(nodes, outputs):
        problems += _check_node(node_id, nodes, object_info)
    return problems


def refuse_unsafe(workflow: ApiWorkflow, object_info: ObjectInfo | None = None) -> None:
    """Refuse a graph that names a file outside ComfyUI's folders, or whose links form a cycle.

    ComfyUI 0.3.75 joins an upload or file-name input to its folder without a check, so a `..`,
    an absolute path or a drive letter there reads any file the server can. Which inputs hold file
    names comes from `object_info` (combos, upload flags); without it, from the inputs' names.

    Raises:
        WorkflowRejected naming each node, class and input (or the nodes of the cycle).
    """
    nodes = workflow.nodes
    problems = [
        NodeProblem(nid, f"{value!r} {why}; name a file inside ComfyUI's folders (e.g. 'photo.png' or "
                    "'sub/photo.png')", class_type=node["class_type"], input_name=name, kind="file_outside_folder",
                    title=title_of(node))
        for nid, node in _ordered(nodes) for name, value in node["inputs"].items()
        if isinstance(value, str) and is_file_input(node["class_type"], name, object_info)
        and (why := escaping_path(value))
    ]  # fmt: skip
    if problems:
        raise WorkflowRejected("the workflow names files outside ComfyUI's folders", problems=tuple(problems))
    if cycle := find_cycle(nodes):
        path = " -> ".join(f"{nid} ({nodes[nid]['class_type']})" for nid in [*cycle, cycle[0]])
        problems = [NodeProblem(nid, f"is part of the link cycle {path}", class_type=nodes[nid]["class_type"],
                                kind="dependency_cycle", title=title_of(nodes[nid])) for nid in cycle]  # fmt: skip
        raise WorkflowRejected(
            f"the workflow's links form a cycle ({path}): a node cannot wait for its own output",
            problems=tuple(problems),
        )


def title_of(node: dict[str, Any]) -> str | None:
    """The node's title as the ComfyUI editor shows it (`_meta.title` of an API graph), if it has one."""
    meta = node.get("_meta")
    title = meta.get("title") if isinstance(meta, dict) else None
    return title if isinstance(title, str) and title.strip() else None


def is_file_input(class_type: str, input_name: str, object_info: ObjectInfo | None = None) -> bool:
    """Whether the server reads this input as a file name: a combo (its options are files or fixed words),
    an upload input, a node that validates its own file, or, for classes `object_info` lacks, a known name."""
    if (class_type, input_name) in _SELF_VALIDATED or input_name in FILE_INPUTS:
        return True
    if object_info is None or not object_info.has_class(class_type):
        return False
    spec = object_info.input_spec(class_type, input_name)
    return spec is not None and (spec.is_combo or spec.has_upload)


def escaping_path(value: str) -> str | None:
    """Why a file name leaves the folder it is joined to (`..`, absolute, drive, control character), or None."""
    if found := _FILE_CONTROL.search(value):
        return f"contains the control character U+{ord(found.group()):04X}"
    if value.startswith(("/", "\\")):
        return "is an absolute path"
    if _DRIVE.match(value):
        return "names a drive"
    if ".." in re.split(r"[\\/]", value):  # Windows servers split on both
        return "has a '..' segment"
    return None


def find_cycle(nodes: dict[str, dict[str, Any]]) -> list[str] | None:
    """The node ids of one cycle of links (in link order), or None when the graph is acyclic."""
    done: set[str] = set()
    for start, _ in _ordered(nodes):
        if start in done:
            continue
        path: list[str] = []
        on_path: dict[str, int] = {}
        stack: list[tuple[str, list[str]]] = [(start, _sources(nodes, start))]
        on_path[start] = 0
        path.append(start)
        while stack:
            node_id, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                del on_path[node_id]
                done.add(node_id)
                continue
            source = pending.pop()
            if source in on_path:
                return path[on_path[source] :]
            if source not in done:
                on_path[source] = len(path)
                path.append(source)
                stack.append((source, _sources(nodes, source)))
    return None


def _sources(nodes: dict[str, dict[str, Any]], node_id: str) -> list[str]:
    """The nodes `node_id` takes links from (present in the graph), last first to pop in input order."""
    sources = [value[0] for value in nodes[node_id]["inputs"].values() if is_link(value) and value[0] in nodes]
    return sources[::-1]


def split_problems(problems: list[NodeProblem] | tuple[NodeProblem, ...]) -> ProblemSplit:
    """Split into "this server lacks something" (missing node class, combo value such as a model
    file not in its list) and "the workflow is wrong" (everything else)."""
    return ProblemSplit(
        tuple(p for p in problems if server_lacks(p)), tuple(p for p in problems if not server_lacks(p))
    )


def _check_node(node_id: str, nodes: dict[str, dict[str, Any]], info: ObjectInfo) -> list[NodeProblem]:
    class_type = nodes[node_id]["class_type"]
    inputs = nodes[node_id]["inputs"]
    problems: list[NodeProblem] = []

    def problem(spec: InputSpec, kind: str, message: str) -> None:
        problems.append(NodeProblem(node_id, message, class_type=class_type, input_name=spec.name, kind=kind,
                                    title=title_of(nodes[node_id])))  # fmt: skip

    for spec in info.inputs(class_type):
        if spec.name not in inputs:
            if spec.required:
                problem(spec, "required_input_missing", "required input is missing")
            continue
        value = inputs[spec.name]
        if isinstance(value, list):  # any bare list is a link to the server
            if link_problem := _link_problem(value, spec, nodes, info):
                problem(spec, *link_problem)
            continue
        if isinstance(value, dict) and "__value__" in value:
            value = value["__value__"]
        if coerce := _COERCE.get(spec.type):
            try:
                value = coerce(value)  # the server coerces in place: "64" is a fine INT
            except Exception:  # mirrors the server's bare except around int()/float()
                problem(spec, "invalid_input_type", f"{value!r} is not a valid {spec.type}")
                continue
        if (class_type, spec.name) in _SELF_VALIDATED or spec.has_upload:
            continue
        if message := _range_problem(value, spec):
            problem(spec, message[0], message[1])
        elif spec.legacy_combo and value not in (spec.choices or ()):
            # only `[[...], {}]` combos are checked by 0.3.75; `["COMBO", {options}]` ones are not
            problem(spec, "value_not_in_list", f"{value!r} is not one of {_options(spec)}")
    return problems


def _link_problem(
    value: list[Any], spec: InputSpec, nodes: dict[str, dict[str, Any]], info: ObjectInfo
) -> tuple[str, str] | None:
    if len(value) != 2:
        return "bad_linked_input", f"bad link {value!r}: must be [node_id, output_index]"
    source_id, slot = value
    if not isinstance(source_id, str) or source_id not in nodes:
        return "bad_linked_input", f"links to node {source_id!r}, which is not in the workflow"
    source_type = nodes[source_id]["class_type"]
    outputs = info.output_types(source_type)
    if not isinstance(slot, int) or isinstance(slot, bool) or not 0 <= slot < len(outputs):
        message = f"links to output {slot!r} of node {source_id} ({source_type}), which has {len(outputs)} outputs"
        return "bad_linked_input", message
    expected = list(spec.choices or ()) if spec.legacy_combo else spec.type
    if not _types_match(outputs[slot], expected):
        message = f"receives {outputs[slot]} from node {source_id} ({source_type}) but expects {spec.type}"
        return "return_type_mismatch", message
    return None


def _types_match(received: Any, expected: Any) -> bool:
    """comfy_execution/validation.py validate_node_input (non-strict), with `*` matching anything."""
    if received == expected or "*" in (received, expected):
        return True
    if not isinstance(received, str) or not isinstance(expected, str):
        return False
    return bool({t.strip() for t in received.split(",")} & {t.strip() for t in expected.split(",")})


def _range_problem(value: Any, spec: InputSpec) -> tuple[str, str] | None:
    """The server's min/max check, in its kinds and words, through the rule `/object_info` declares (`spec_rule`)."""
    if (rule := spec_rule(spec)) is None or rule.kind == "combo":
        return None
    try:
        check_bounds(rule, value)
    except OutOfRange as exc:  # a spec rule has no multiple_of: the server does not check `step`
        if exc.bound == "min":
            return "value_smaller_than_min", f"{value!r} is smaller than the minimum {exc.limit}"
        return "value_bigger_than_max", f"{value!r} is bigger than the maximum {exc.limit}"
    except TypeError:  # the server would raise here too (exception_during_validation)
        return "invalid_input_type", f"{value!r} cannot be compared with the range of {spec.type}"
    return None


def _ancestors(nodes: dict[str, dict[str, Any]], outputs: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    stack = list(reversed(outputs))
    while stack:
        node_id = stack.pop()
        if node_id in seen or node_id not in nodes:
            continue
        seen[node_id] = None
        for value in nodes[node_id]["inputs"].values():
            if is_link(value):
                stack.append(value[0])
    return list(seen)


def _ordered(nodes: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(nodes.items(), key=lambda item: node_sort_key(item[0]))


def _options(spec: InputSpec) -> str:
    choices = spec.choices or ()
    if len(choices) > 20:  # as the server: do not echo long model lists
        return f"the server's {len(choices)} options"
    return "[" + ", ".join(repr(c) for c in choices) + "]"
