"""API-format workflows: parsing, hashing, and binding the parameters `parameters` finds.

Values are JSON data, never text templates: a prompt with quotes, braces or `</script>` is
stored as it is (`comfyui-protocol.md` §5).
"""

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from comfybatch.comfy.graph import describe_json, node_sort_key, parse_json
from comfybatch.comfy.parameters import Bindings, InputPath, find_parameters, literal, updates_for, with_values
from comfybatch.errors import WorkflowFormatError

if TYPE_CHECKING:
    from comfybatch.comfy.object_info import ObjectInfo

__all__ = ["ApiWorkflow", "Bindings", "InputPath", "literal"]


class ApiWorkflow:
    """An immutable API-format graph `{"<id>": {"class_type", "inputs", "_meta"?}}`.

    Every method returns a new workflow; `nodes` returns a fresh copy. Workflows made by `bind`
    share their unchanged nodes, so the internal graph is never handed out or mutated.

    Example:
        workflow = load_workflow(Path("txt2img.json")).bind({"prompt": "a cat", "seed": 7})
    """

    __slots__ = ("_hash", "_nodes")

    def __init__(self, nodes: Mapping[str, Any]) -> None:
        """Validate and copy an API-format graph.

        Raises:
            WorkflowFormatError: not a graph, or a node without a `class_type`.
        """
        self._nodes: dict[str, dict[str, Any]] = _validated(nodes)
        self._hash: str | None = None

    @classmethod
    def from_json(cls, text: str | bytes) -> "ApiWorkflow":
        """Parse API-format JSON text.

        Raises:
            WorkflowFormatError.
        """
        return cls(parse_json(text))

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        """A fresh, mutable copy of the graph (the `prompt` of `POST /prompt`)."""
        return copy.deepcopy(self._nodes)

    @property
    def node_ids(self) -> list[str]:
        """Node ids in numeric order."""
        return sorted(self._nodes, key=node_sort_key)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiWorkflow) and self._nodes == other._nodes

    def __hash__(self) -> int:
        return hash(_canonical(self._nodes))

    def __repr__(self) -> str:
        return f"ApiWorkflow({len(self._nodes)} nodes, {self.content_hash()[:12]})"

    def class_type(self, node_id: str) -> str:
        """The class of node `node_id`.

        Raises:
            KeyError: no such node.
        """
        return str(self._nodes[node_id]["class_type"])

    def string_inputs(self, node_id: str) -> list[tuple[str, str]]:
        """Node `node_id`'s inputs whose values are strings, as (name, value): read without copying the graph (a
        batch's planning reads them for every job on every server)."""
        inputs = self._nodes[node_id].get("inputs", {})
        return [(name, value) for name, value in inputs.items() if isinstance(value, str)]

    def get_input(self, node_id: str, input_name: str, default: Any = None) -> Any:
        """A copy of one input's value (a literal or a link), or `default`."""
        return copy.deepcopy(self._nodes.get(node_id, {}).get("inputs", {}).get(input_name, default))

    def to_json(self, *, indent: int | None = None) -> str:
        """The graph as JSON text (non-ASCII kept as is)."""
        return json.dumps(self._nodes, indent=indent, ensure_ascii=False)

    def content_hash(self) -> str:
        """sha256 of the canonical JSON of what the server executes (`_meta` titles excluded)."""
        if self._hash is None:
            executed = {nid: {k: v for k, v in node.items() if k != "_meta"} for nid, node in self._nodes.items()}
            self._hash = hashlib.sha256(_canonical(executed).encode()).hexdigest()
        return self._hash

    def output_node_ids(self, object_info: "ObjectInfo") -> list[str]:
        """Ids of the nodes whose class is an output node on that server, in numeric order."""
        return [nid for nid in self.node_ids if object_info.is_output_node(self.class_type(nid))]

    def with_input(self, node_id: str, input_name: str, value: Any) -> "ApiWorkflow":
        """A copy with one input set to the literal `value` (lists are wrapped, see `literal`).

        Raises:
            BindingError: no such node, the input is a link, or `value` is not JSON data.
        """
        return ApiWorkflow._adopt(with_values(self._nodes, {InputPath(node_id, input_name): literal(value)}))

    def parameters(self, bindings: Bindings | None = None) -> dict[str, list[InputPath]]:
        """Parameter names and the inputs each one sets.

        With `bindings` (e.g. `{"prompt": "6.inputs.text"}`) exactly those, checked against the
        graph. Without, the common txt2img parameters are detected: `prompt`, `negative_prompt`
        (the text encoders behind each sampler's `positive`/`negative`), `seed`, `steps`, `cfg`,
        `sampler`, `scheduler`, `denoise`, `checkpoint`, `filename_prefix` (literal inputs of that
        name on any node), `width`, `height`, `batch_size` (on `Empty…` nodes). A parameter found
        on several nodes binds all of them: two samplers share one seed, two save nodes one prefix.

        Raises:
            BindingError: an explicit binding names a missing node or input.
        """
        return find_parameters(self._nodes, bindings)

    def bind(self, values: Mapping[str, Any], bindings: Bindings | None = None) -> "ApiWorkflow":
        """A copy with each named parameter set on every input it binds (see `parameters`).

        Only the nodes that change are copied; the copy shares the others with this workflow.

        Raises:
            BindingError: an unknown name (the message lists the names offered), an input that is
                a link, or a value that is not JSON data.
        """
        updates = updates_for(self.parameters(bindings), values)
        return ApiWorkflow._adopt(with_values(self._nodes, updates))

    @classmethod
    def _adopt(cls, nodes: dict[str, dict[str, Any]]) -> "ApiWorkflow":
        # Internal construction: `nodes` was derived from a validated graph plus `literal` values,
        # so the JSON round trip of `__init__` is skipped, and the caller keeps no reference to it.
        workflow = cls.__new__(cls)
        workflow._nodes = nodes
        workflow._hash = None
        return workflow

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        """Let pydantic models hold an `ApiWorkflow`: validated from a dict, dumped as one."""
        from_dict = core_schema.no_info_after_validator_function(
            cls, core_schema.dict_schema(core_schema.str_schema(), core_schema.any_schema())
        )
        return core_schema.json_or_python_schema(
            json_schema=from_dict,
            python_schema=core_schema.union_schema([core_schema.is_instance_schema(cls), from_dict]),
            serialization=core_schema.plain_serializer_function_ser_schema(lambda w: w.nodes),
        )


def _validated(data: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise WorkflowFormatError(f"expected an API-format graph (an object of nodes), found {describe_json(data)}")
    if not data:
        raise WorkflowFormatError("the workflow has no nodes")
    if isinstance(data.get("nodes"), list):
        raise WorkflowFormatError("this is a UI-format workflow; convert it with load_workflow(..., object_info)")
    nodes: dict[str, dict[str, Any]] = {}
    for node_id, node in data.items():
        where = f"node {str(node_id)!r}"
        if not isinstance(node, Mapping):
            raise WorkflowFormatError(f"{where} is not an object but {describe_json(node)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            found = "has no class_type" if class_type is None else f"has class_type {class_type!r}"
            raise WorkflowFormatError(f"{where} {found}; every node needs a class_type string")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowFormatError(
                f"{where} ({class_type}) has inputs that are {describe_json(inputs)}, not an object"
            )
        nodes[str(node_id)] = {**node, "inputs": dict(inputs)}
    try:
        copied: dict[str, dict[str, Any]] = json.loads(json.dumps(nodes, allow_nan=False))  # proves JSON data
    except (TypeError, ValueError) as exc:
        raise WorkflowFormatError(f"workflow contains a value that is not JSON data: {exc}") from exc
    return copied


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
