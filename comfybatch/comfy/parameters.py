"""Workflow parameters: input paths, detection of the common txt2img and image-in parameters, and binding values.

Functions here read a validated API-format graph and never mutate it; `with_values` copies only
the nodes it changes and shares the rest, which is safe because `ApiWorkflow` never hands them out.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from comfybatch.comfy.graph import is_int, is_link, node_sort_key
from comfybatch.errors import BindingError

Graph = Mapping[str, dict[str, Any]]


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
# Detected parameter -> the loader class whose first node (by id) holds it in its `image` input.
_DETECTED_LOADERS = {"image": "LoadImage", "mask": "LoadImageMask"}
UPLOAD_INPUTS = frozenset({("LoadImage", "image"), ("LoadImageMask", "image")})  # take a file in the input folder
_SIZE_INPUTS = ("width", "height", "batch_size")  # on EmptyLatentImage-like nodes (class "Empty…")
_TEXT_INPUTS = ("text", "text_g", "text_l")
_CONDITIONING_HOPS = ("conditioning", "conditioning_to", "conditioning_1")
_MAX_HOPS = 16
# json.loads(json.dumps(v)) == v, of the same type, for exactly these (finite floats; NaN never passes dumps).
_PLAIN_SCALARS = frozenset({str, int, float, bool, type(None)})


def literal(value: Any) -> Any:
    """`value` as an input literal: lists are wrapped `{"__value__": [...]}`, a bare list being a link.

    The result is fresh JSON data (tuples become lists, keys strings), never shared with the caller.

    Raises:
        BindingError: `value` is not JSON data.
    """
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise BindingError(f"value {value!r} is not JSON data: {exc}") from exc
    if type(value) in _PLAIN_SCALARS:  # immutable and already what the round trip would give
        return value
    data = json.loads(text)
    return {"__value__": data} if isinstance(value, list | tuple) else data


def find_parameters(nodes: Graph, bindings: Bindings | None = None) -> dict[str, list[InputPath]]:
    """Parameter names and the inputs each one sets (see `ApiWorkflow.parameters`).

    Raises:
        BindingError: an explicit binding names a missing node or input.
    """
    explicit = {name: _explicit_paths(nodes, name, spec) for name, spec in (bindings or {}).items()}
    taken = {path for paths in explicit.values() for path in paths}
    # Detected names stay on offer unless an explicit binding claims their inputs (or their name).
    detected = {name: paths for name, paths in _detected_parameters(nodes).items()
                if name not in explicit and not taken.intersection(paths)}  # fmt: skip
    return {**detected, **explicit}


def updates_for(offered: Mapping[str, list[InputPath]], values: Mapping[str, Any]) -> dict[InputPath, Any]:
    """The literal to write at each input, for `values` by parameter name.

    Raises:
        BindingError: an unknown name (the message lists the names offered), or a value that is not JSON data.
    """
    if unknown := sorted(set(values) - set(offered)):
        names = ", ".join(sorted(offered)) or "none"
        raise BindingError(f"unknown parameter(s) {', '.join(unknown)}; this workflow offers: {names}")
    updates: dict[InputPath, Any] = {}
    for name, value in values.items():
        updates.update(dict.fromkeys(offered[name], literal(value)))  # immutable from here on: one object may serve all
    return updates


def with_values(nodes: Graph, updates: Mapping[InputPath, Any]) -> dict[str, dict[str, Any]]:
    """A new graph with each input set to its literal: changed nodes are copied, the others shared.

    Raises:
        BindingError: no such node, or the input is a link.
    """
    changed: dict[str, dict[str, Any]] = {}
    for path, value in updates.items():
        node = changed[path.node_id] if path.node_id in changed else nodes.get(path.node_id)
        if node is None:
            raise BindingError(f"cannot set {path}: the workflow has no node {path.node_id!r}")
        current = node["inputs"].get(path.input_name)
        if isinstance(current, list):  # the server reads any bare list as a link
            raise BindingError(
                f"cannot set node {path.node_id} ({node['class_type']}) input "
                f"'{path.input_name}': it is a link {current!r}, not a value"
            )
        if path.node_id not in changed:
            node = changed[path.node_id] = {**node, "inputs": dict(node["inputs"])}
        node["inputs"][path.input_name] = value
    return {**nodes, **changed}  # node order kept: the JSON sent is laid out as before


def _explicit_paths(nodes: Graph, name: str, spec: "str | InputPath | Sequence[str | InputPath]") -> list[InputPath]:
    raw = [spec] if isinstance(spec, str | InputPath) else list(spec)
    paths = [InputPath.parse(item) for item in raw]
    for path in paths:
        node = nodes.get(path.node_id)
        if node is None:
            raise BindingError(f"binding '{name}' -> {path}: the workflow has no node {path.node_id!r}")
        if path.input_name not in node["inputs"]:
            have = ", ".join(sorted(node["inputs"])) or "none"
            raise BindingError(
                f"binding '{name}' -> {path}: node {path.node_id} ({node['class_type']}) has no input "
                f"'{path.input_name}' (it has: {have})"
            )
    return paths


def _detected_parameters(nodes: Graph) -> dict[str, list[InputPath]]:
    found: dict[str, list[InputPath]] = {}
    node_ids = sorted(nodes, key=node_sort_key)
    positive, negative = _prompt_paths(nodes, node_ids)
    if positive:
        found["prompt"] = positive
    if negative := [p for p in negative if p not in positive]:
        found["negative_prompt"] = negative
    for param, class_type in _DETECTED_LOADERS.items():
        loader = next((n for n in node_ids if nodes[n]["class_type"] == class_type), None)
        if loader is not None and isinstance(nodes[loader]["inputs"].get("image"), str):
            found[param] = [InputPath(loader, "image")]
    for node_id in node_ids:
        node = nodes[node_id]
        for param, names in _DETECTED_INPUTS.items():
            for input_name in names:
                value = node["inputs"].get(input_name)
                if value is None or isinstance(value, list) or (param == "seed" and not is_int(value)):
                    continue
                found.setdefault(param, []).append(InputPath(node_id, input_name))
        if node["class_type"].startswith("Empty"):
            for input_name in _SIZE_INPUTS:
                if is_int(node["inputs"].get(input_name)):
                    found.setdefault(input_name, []).append(InputPath(node_id, input_name))
    return found


def _prompt_paths(nodes: Graph, node_ids: list[str]) -> tuple[list[InputPath], list[InputPath]]:
    positive: list[InputPath] = []
    negative: list[InputPath] = []
    for node_id in node_ids:
        inputs = nodes[node_id]["inputs"]
        if is_link(inputs.get("positive")) and is_link(inputs.get("negative")):
            positive += [p for p in _trace_text(nodes, inputs["positive"], "positive") if p not in positive]
            negative += [p for p in _trace_text(nodes, inputs["negative"], "negative") if p not in negative]
    return positive, negative


def _trace_text(nodes: Graph, link: list[Any], side: str) -> list[InputPath]:
    """Follow a conditioning link upstream to the text encoder's literal text inputs."""
    for _ in range(_MAX_HOPS):
        node_id = link[0]
        inputs = nodes.get(node_id, {}).get("inputs", {})
        texts = [name for name in _TEXT_INPUTS if name in inputs]
        if texts:
            return [path for name in texts if (path := _text_source(nodes, node_id, name))]
        hop = next((inputs[n] for n in (side, *_CONDITIONING_HOPS) if is_link(inputs.get(n))), None)
        if hop is None:
            return []
        link = hop
    return []


def _text_source(nodes: Graph, node_id: str, input_name: str) -> InputPath | None:
    value = nodes[node_id]["inputs"][input_name]
    if isinstance(value, str):
        return InputPath(node_id, input_name)
    if is_link(value):  # e.g. a PrimitiveString / PrimitiveStringMultiline feeding the encoder
        source = nodes.get(value[0], {}).get("inputs", {})
        if isinstance(source.get("value"), str):
            return InputPath(value[0], "value")
    return None
