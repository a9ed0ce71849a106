"""Check an API workflow against a server's `/object_info` before queueing it.

Mirrors ComfyUI 0.3.75 `execution.py` `validate_prompt` / `validate_inputs`, coercions included,
so preflight never rejects what the server would accept.
"""

from typing import Any, NamedTuple

from comfybatch.comfy.object_info import InputSpec, ObjectInfo
from comfybatch.comfy.rejection import server_lacks
from comfybatch.comfy.workflow import ApiWorkflow, node_sort_key
from comfybatch.errors import NodeProblem

GRAPH = "-"  # node_id of problems about the whole prompt (as in comfy/rejection.py)
# Inputs whose node validates them itself (VALIDATE_INPUTS), so the server skips its range/combo check.
_SELF_VALIDATED = frozenset(
    {("LoadImage", "image"), ("LoadImageMask", "image"), ("LoadLatent", "latent"), ("LoadVideo", "file"),
     ("LoadAudio", "audio")}
)  # fmt: skip
_COERCE = {"INT": int, "FLOAT": float, "STRING": str, "BOOLEAN": bool}


class ProblemSplit(NamedTuple):
    """Problems split by who must act: the server's owner, or the workflow's author."""

    server_lacks: tuple[NodeProblem, ...]  # raise ServerIncompatible: another server may have it
    workflow_wrong: tuple[NodeProblem, ...]  # raise WorkflowRejected: no server will run it


def check_workflow(workflow: ApiWorkflow, object_info: ObjectInfo) -> list[NodeProblem]:
    """Everything the server would reject in `workflow`, as `NodeProblem`s with ComfyUI's kinds.

    Kinds: `missing_node_type`, `prompt_no_outputs`, `required_input_missing`, `bad_linked_input`,
    `return_type_mismatch`, `invalid_input_type`, `value_smaller_than_min`, `value_bigger_than_max`,
    `value_not_in_list`. Like the server, inputs are checked only on nodes that outputs depend on.
    """
    nodes = workflow.nodes
    missing = [
        NodeProblem(nid, f"node class {node['class_type']!r} is not installed on this server",
                    class_type=node["class_type"], kind="missing_node_type")
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
        problems.append(NodeProblem(node_id, message, class_type=class_type, input_name=spec.name, kind=kind))

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
    try:
        if spec.min is not None and value < spec.min:
            return "value_smaller_than_min", f"{value!r} is smaller than the minimum {spec.min}"
        if spec.max is not None and value > spec.max:
            return "value_bigger_than_max", f"{value!r} is bigger than the maximum {spec.max}"
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
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                stack.append(value[0])
    return list(seen)


def _ordered(nodes: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return sorted(nodes.items(), key=lambda item: node_sort_key(item[0]))


def _options(spec: InputSpec) -> str:
    choices = spec.choices or ()
    if len(choices) > 20:  # as the server: do not echo long model lists
        return f"the server's {len(choices)} options"
    return "[" + ", ".join(repr(c) for c in choices) + "]"
