"""API-format workflows: parsing, format detection, hashing and parameter binding.

Values are JSON data, never text templates: a prompt with quotes, braces or `</script>` is
stored as it is (`comfyui-protocol.md` §5).
"""

import copy
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import GetCoreSchemaHandler
from pydantic_core import CoreSchema, core_schema

from comfybatch.errors import BindingError, WorkflowFormatError

if TYPE_CHECKING:
    from comfybatch.comfy.object_info import ObjectInfo

WorkflowFormat = Literal["api", "ui"]


@dataclass(frozen=True, order=True)
class InputPath:
    """Where a parameter lives: one input of one node, written `"6.inputs.text"` (or `"6.text"`)."""

    node_id: str
    input_name: str

    def __str__(self) -> str:
        return f"{self.node_id}.inputs.{self.input_name}"

    @classmethod
    def parse(cls, text: "str | InputPath") -> "InputPath":
        """Parse `"<node>.inputs.<input>"` or the short `"<node>.<input>"`.

        Raises:
            BindingError: neither form.
        """
        if isinstance(text, InputPath):
            return text
        node_id, sep, input_name = text.partition(".inputs.")
        if not sep:
            node_id, sep, input_name = text.partition(".")
        if not (sep and node_id and input_name):
            raise BindingError(f"binding {text!r} is not of the form '<node_id>.inputs.<input>' or '<node_id>.<input>'")
        return cls(node_id, input_name)


Bindings = Mapping[str, "str | InputPath | Sequence[str | InputPath]"]

# Detected parameter → input names that hold it, on any node (all of them are bound).
_DETECTED_INPUTS: dict[str, tuple[str, ...]] = {
    "seed": ("seed", "noise_seed"),
    "steps": ("steps",),
    "cfg": ("cfg",),
    "sampler": ("sampler_name",),
    "scheduler": ("scheduler",),
    "denoise": ("denoise",),
    "checkpoint": ("ckpt_name",),
    "filename_prefix": ("filename_prefix",),
}
_SIZE_INPUTS = ("width", "height", "batch_size")  # on EmptyLatentImage-like nodes (class "Empty…")
_TEXT_INPUTS = ("text", "text_g", "text_l")
_CONDITIONING_HOPS = ("conditioning", "conditioning_to", "conditioning_1")
_MAX_HOPS = 16


def is_link(value: Any) -> bool:
    """Whether an input value is a link `["<node_id>", <output_index>]`."""
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and _is_int(value[1])


def literal(value: Any) -> Any:
    """`value` as an input literal: lists are wrapped `{"__value__": [...]}`, a bare list being a link.

    Raises:
        BindingError: `value` is not JSON data.
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BindingError(f"value {value!r} is not JSON data: {exc}") from exc
    if isinstance(value, list | tuple):
        return {"__value__": copy.deepcopy(list(value))}
    return copy.deepcopy(value)


def node_sort_key(node_id: str) -> tuple[tuple[int, int | str], ...]:
    """Order node ids numerically, subgraph ids (`"5:3"`) after their parent."""
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in node_id.split(":"))


class ApiWorkflow:
    """An immutable API-format graph `{"<id>": {"class_type", "inputs", "_meta"?}}`.

    Every method returns a new workflow; `nodes` returns a fresh copy.

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
        return cls(_parse_json(text))

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
        return self._with_values({InputPath(node_id, input_name): literal(value)})

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
        if bindings:
            return {name: self._explicit_paths(name, spec) for name, spec in bindings.items()}
        return self._detected_parameters()

    def bind(self, values: Mapping[str, Any], bindings: Bindings | None = None) -> "ApiWorkflow":
        """A copy with each named parameter set on every input it binds (see `parameters`).

        Raises:
            BindingError: an unknown name (the message lists the names offered), an input that is
                a link, or a value that is not JSON data.
        """
        offered = self.parameters(bindings)
        if unknown := sorted(set(values) - set(offered)):
            names = ", ".join(sorted(offered)) or "none"
            raise BindingError(f"unknown parameter(s) {', '.join(unknown)}; this workflow offers: {names}")
        updates: dict[InputPath, Any] = {}
        for name, value in values.items():
            updates.update(dict.fromkeys(offered[name], literal(value)))
        return self._with_values(updates)

    def _with_values(self, updates: Mapping[InputPath, Any]) -> "ApiWorkflow":
        nodes = copy.deepcopy(self._nodes)
        for path, value in updates.items():
            if path.node_id not in nodes:
                raise BindingError(f"cannot set {path}: the workflow has no node {path.node_id!r}")
            inputs = nodes[path.node_id]["inputs"]
            if isinstance(inputs.get(path.input_name), list):  # the server reads any bare list as a link
                raise BindingError(
                    f"cannot set node {path.node_id} ({nodes[path.node_id]['class_type']}) input "
                    f"'{path.input_name}': it is a link {inputs[path.input_name]!r}, not a value"
                )
            inputs[path.input_name] = copy.deepcopy(value)
        return ApiWorkflow(nodes)

    def _explicit_paths(self, name: str, spec: "str | InputPath | Sequence[str | InputPath]") -> list[InputPath]:
        raw = [spec] if isinstance(spec, str | InputPath) else list(spec)
        paths = [InputPath.parse(item) for item in raw]
        for path in paths:
            node = self._nodes.get(path.node_id)
            if node is None:
                raise BindingError(f"binding '{name}' -> {path}: the workflow has no node {path.node_id!r}")
            if path.input_name not in node["inputs"]:
                have = ", ".join(sorted(node["inputs"])) or "none"
                raise BindingError(
                    f"binding '{name}' -> {path}: node {path.node_id} ({node['class_type']}) has no input "
                    f"'{path.input_name}' (it has: {have})"
                )
        return paths

    def _detected_parameters(self) -> dict[str, list[InputPath]]:
        found: dict[str, list[InputPath]] = {}
        positive, negative = self._prompt_paths()
        if positive:
            found["prompt"] = positive
        if negative := [p for p in negative if p not in positive]:
            found["negative_prompt"] = negative
        for node_id in self.node_ids:
            node = self._nodes[node_id]
            for param, names in _DETECTED_INPUTS.items():
                for input_name in names:
                    value = node["inputs"].get(input_name)
                    if value is None or isinstance(value, list) or (param == "seed" and not _is_int(value)):
                        continue
                    found.setdefault(param, []).append(InputPath(node_id, input_name))
            if node["class_type"].startswith("Empty"):
                for input_name in _SIZE_INPUTS:
                    if _is_int(node["inputs"].get(input_name)):
                        found.setdefault(input_name, []).append(InputPath(node_id, input_name))
        return found

    def _prompt_paths(self) -> tuple[list[InputPath], list[InputPath]]:
        positive: list[InputPath] = []
        negative: list[InputPath] = []
        for node_id in self.node_ids:
            inputs = self._nodes[node_id]["inputs"]
            if is_link(inputs.get("positive")) and is_link(inputs.get("negative")):
                positive += [p for p in self._trace_text(inputs["positive"], "positive") if p not in positive]
                negative += [p for p in self._trace_text(inputs["negative"], "negative") if p not in negative]
        return positive, negative

    def _trace_text(self, link: list[Any], side: str) -> list[InputPath]:
        """Follow a conditioning link upstream to the text encoder's literal text inputs."""
        for _ in range(_MAX_HOPS):
            node_id = link[0]
            inputs = self._nodes.get(node_id, {}).get("inputs", {})
            texts = [name for name in _TEXT_INPUTS if name in inputs]
            if texts:
                return [path for name in texts if (path := self._text_source(node_id, name))]
            hop = next((inputs[n] for n in (side, *_CONDITIONING_HOPS) if is_link(inputs.get(n))), None)
            if hop is None:
                return []
            link = hop
        return []

    def _text_source(self, node_id: str, input_name: str) -> InputPath | None:
        value = self._nodes[node_id]["inputs"][input_name]
        if isinstance(value, str):
            return InputPath(node_id, input_name)
        if is_link(value):  # e.g. a PrimitiveString / PrimitiveStringMultiline feeding the encoder
            source = self._nodes.get(value[0], {}).get("inputs", {})
            if isinstance(source.get("value"), str):
                return InputPath(value[0], "value")
        return None

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


def detect_format(data: Any) -> WorkflowFormat:
    """`"ui"` for an editor save (`nodes` list), `"api"` for a graph of `class_type` nodes.

    Raises:
        WorkflowFormatError: neither; the message says what was found.
    """
    if isinstance(data, Mapping):
        if isinstance(data.get("nodes"), list):
            return "ui"
        values = list(data.values())
        nodes_like = values and all(isinstance(v, Mapping) for v in values)
        if nodes_like and any("class_type" in v or "inputs" in v for v in values):
            return "api"
        if isinstance(data.get("prompt"), Mapping):
            raise WorkflowFormatError(
                "expected a workflow, found an object with a 'prompt' key (a /prompt request body?); "
                "pass its 'prompt' value instead"
            )
    raise WorkflowFormatError(
        f"expected a ComfyUI workflow (API format: nodes with class_type; UI format: a 'nodes' list), "
        f"found {_describe(data)}"
    )


def load_workflow(
    raw: "str | bytes | Mapping[str, Any] | Path", object_info: "ObjectInfo | None" = None
) -> ApiWorkflow:
    """Load a workflow in either format; UI format is converted for the server `object_info` describes.

    `raw` is JSON text or bytes, a decoded dict, or a `Path`; a `str` that does not start with
    `{`/`[` and names an existing file (or ends in `.json`) is read as a path.

    Raises:
        WorkflowFormatError: unreadable, not JSON, not a workflow, UI format without
            `object_info`, or not convertible.
    """
    data = _decode(raw)
    if detect_format(data) == "api":
        return ApiWorkflow(data)
    if object_info is None:
        raise WorkflowFormatError(
            "this is a UI-format workflow (as saved by the ComfyUI editor); converting it needs the target "
            "server's node definitions: connect to a server or pass an object_info JSON file "
            "(or re-export the workflow with 'Export (API)')"
        )
    from comfybatch.comfy.convert import ui_to_api  # convert builds on this module

    return ui_to_api(data, object_info)


def _decode(raw: "str | bytes | Mapping[str, Any] | Path") -> Any:
    if isinstance(raw, Mapping):
        return raw
    if isinstance(raw, str) and not raw.lstrip().startswith(("{", "[")) and (raw.endswith(".json") or _is_file(raw)):
        raw = Path(raw)
    if isinstance(raw, Path):
        try:
            raw = raw.read_bytes()
        except OSError as exc:
            raise WorkflowFormatError(f"cannot read workflow file {str(raw)!r}: {exc.strerror or exc}") from exc
    return _parse_json(raw)


def _is_file(text: str) -> bool:
    try:
        return len(text) < 4096 and Path(text).is_file()
    except (OSError, ValueError):
        return False


def _parse_json(text: str | bytes) -> Any:
    try:
        if isinstance(text, bytes):
            text = text.decode("utf-8-sig")
        return json.loads(text)
    except UnicodeDecodeError as exc:
        raise WorkflowFormatError(f"workflow is not UTF-8 text (byte {exc.start})") from exc
    except json.JSONDecodeError as exc:
        raise WorkflowFormatError(
            f"workflow is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno} (char {exc.pos})"
        ) from exc


def _validated(data: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(data, Mapping):
        raise WorkflowFormatError(f"expected an API-format graph (an object of nodes), found {_describe(data)}")
    if not data:
        raise WorkflowFormatError("the workflow has no nodes")
    if isinstance(data.get("nodes"), list):
        raise WorkflowFormatError("this is a UI-format workflow; convert it with load_workflow(..., object_info)")
    nodes: dict[str, dict[str, Any]] = {}
    for node_id, node in data.items():
        where = f"node {str(node_id)!r}"
        if not isinstance(node, Mapping):
            raise WorkflowFormatError(f"{where} is not an object but {_describe(node)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            found = "has no class_type" if class_type is None else f"has class_type {class_type!r}"
            raise WorkflowFormatError(f"{where} {found}; every node needs a class_type string")
        inputs = node.get("inputs", {})
        if not isinstance(inputs, Mapping):
            raise WorkflowFormatError(f"{where} ({class_type}) has inputs that are {_describe(inputs)}, not an object")
        nodes[str(node_id)] = {**node, "inputs": dict(inputs)}
    try:
        copied: dict[str, dict[str, Any]] = json.loads(json.dumps(nodes, allow_nan=False))  # proves JSON data
    except (TypeError, ValueError) as exc:
        raise WorkflowFormatError(f"workflow contains a value that is not JSON data: {exc}") from exc
    return copied


def _canonical(data: Any) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _describe(data: Any) -> str:
    if isinstance(data, Mapping):
        if not data:
            return "an empty JSON object"
        keys = ", ".join(repr(str(k)) for k in list(data)[:5])
        return f"a JSON object with keys {keys}{', …' if len(data) > 5 else ''}"
    if isinstance(data, list):
        return f"a JSON array of {len(data)} items"
    if isinstance(data, str):
        return "a JSON string"
    if isinstance(data, bool):
        return "a JSON boolean"
    if isinstance(data, int | float):
        return "a JSON number"
    return "null" if data is None else f"a {type(data).__name__}"
