"""A server's `GET /object_info`: which node classes exist, their inputs, widgets and outputs.

The converter and preflight read it; it mirrors how the ComfyUI frontend turns a node
definition into widgets (`comfyui-protocol.md` §5).
"""

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})
CONTROL_AFTER_GENERATE_VALUES = frozenset({"fixed", "increment", "decrement", "randomize"})
# Frontend useIntWidget.ts: seed-like INT inputs get the control widget when the spec is silent.
_IMPLICIT_CONTROL_NAMES = frozenset({"seed", "noise_seed"})
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "animated_image_upload")


@dataclass(frozen=True)
class InputSpec:
    """One declared input of a node class: `name: (type, options)` from `INPUT_TYPES`."""

    name: str
    type: str  # "INT", "IMAGE", "*", … ; "COMBO" for both combo spellings
    options: Mapping[str, Any] = field(default_factory=dict)
    required: bool = True
    choices: tuple[Any, ...] | None = None  # combo options; None for non-combos
    legacy_combo: bool = False  # `[[...], {}]` form, which the server checks (`"COMBO"` it does not)

    @property
    def is_combo(self) -> bool:
        """Whether the input is a dropdown (either spelling)."""
        return self.choices is not None

    @property
    def is_widget(self) -> bool:
        """Whether the frontend gives the input a widget (and so a `widgets_values` slot)."""
        if self.options.get("forceInput") or self.options.get("defaultInput"):
            return False
        widget_type = self.options.get("widgetType")
        if isinstance(widget_type, str) and widget_type:
            return True
        return self.is_combo or self.type in WIDGET_TYPES or bool(self.options.get("socketless"))

    @property
    def has_control_after_generate(self) -> bool:
        """Whether a `fixed`/`increment`/… value follows this widget's value in `widgets_values`."""
        flag = self.options.get("control_after_generate")
        if flag is not None:
            return bool(flag)
        return self.type == "INT" and self.name in _IMPLICIT_CONTROL_NAMES

    @property
    def has_upload(self) -> bool:
        """Whether the frontend adds an upload button after this combo (LoadImage's `"image"` value)."""
        return any(self.options.get(flag) for flag in UPLOAD_FLAGS)

    @property
    def min(self) -> Any:
        """The declared minimum, or None."""
        return self.options.get("min")

    @property
    def max(self) -> Any:
        """The declared maximum, or None."""
        return self.options.get("max")

    @property
    def default(self) -> Any:
        """The declared default, or None."""
        return self.options.get("default")


@dataclass(frozen=True)
class NodeClass:
    """One node class of `/object_info`, parsed."""

    name: str
    inputs: tuple[InputSpec, ...]
    output_types: tuple[Any, ...]
    output_node: bool
    display_name: str | None

    def input(self, name: str) -> InputSpec | None:
        """The declared input called `name` (required or optional), or None."""
        return next((spec for spec in self.inputs if spec.name == name), None)

    @property
    def widget_inputs(self) -> tuple[InputSpec, ...]:
        """The inputs that own a widget, in the order the frontend creates them."""
        return tuple(spec for spec in self.inputs if spec.is_widget)


class ObjectInfo:
    """A server's node catalogue (`GET /object_info`), parsed on demand and cached per class.

    Example:
        info = ObjectInfo(await comfy.get_object_info_raw())
        info.has_class("KSampler"), info.combo_options("CheckpointLoaderSimple", "ckpt_name")
    """

    __slots__ = ("_classes", "_raw")

    def __init__(self, raw: Mapping[str, Any]) -> None:
        """Wrap a decoded `/object_info` answer; entries that are not objects are ignored.

        Raises:
            ValueError: `raw` is not a JSON object.
        """
        if not isinstance(raw, Mapping):
            raise ValueError(f"object_info must be a JSON object, not {type(raw).__name__}")
        self._raw: dict[str, Mapping[str, Any]] = {k: v for k, v in raw.items() if isinstance(v, Mapping)}
        self._classes: dict[str, NodeClass] = {}

    def __eq__(self, other: object) -> bool:
        """The same catalogue: servers that answer alike accept the same graphs."""
        return isinstance(other, ObjectInfo) and self._raw == other._raw

    __hash__ = None  # type: ignore[assignment]  # mutable caches inside: compare, do not hash

    @classmethod
    def from_json(cls, text: str | bytes) -> "ObjectInfo":
        """Parse `/object_info` JSON text.

        Raises:
            ValueError: not JSON, or not a JSON object.
        """
        return cls(json.loads(text))

    @classmethod
    def from_file(cls, path: Path) -> "ObjectInfo":
        """Read a saved `/object_info` file.

        Raises:
            OSError, ValueError.
        """
        return cls.from_json(path.read_bytes())

    @property
    def raw(self) -> Mapping[str, Mapping[str, Any]]:
        """The catalogue as the server sent it (do not mutate)."""
        return self._raw

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._raw

    def __iter__(self) -> Iterator[str]:
        return iter(self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def has_class(self, class_type: str) -> bool:
        """Whether the server has the node class `class_type`."""
        return class_type in self._raw

    def node_class(self, class_type: str) -> NodeClass:
        """The parsed class `class_type`.

        Raises:
            KeyError: the server has no such class (check `has_class` first).
        """
        if (parsed := self._classes.get(class_type)) is None:
            parsed = self._classes[class_type] = _parse_class(class_type, self._raw[class_type])
        return parsed

    def inputs(self, class_type: str) -> tuple[InputSpec, ...]:
        """Declared inputs in `input_order`: required, then optional (hidden ones excluded)."""
        return self.node_class(class_type).inputs

    def input_spec(self, class_type: str, input_name: str) -> InputSpec | None:
        """One declared input, or None if the class does not declare it."""
        return self.node_class(class_type).input(input_name)

    def widget_inputs(self, class_type: str) -> tuple[InputSpec, ...]:
        """The inputs that own a widget, in widget order."""
        return self.node_class(class_type).widget_inputs

    def is_widget(self, class_type: str, input_name: str) -> bool:
        """Whether the input owns a widget."""
        spec = self.input_spec(class_type, input_name)
        return spec is not None and spec.is_widget

    def has_control_after_generate(self, class_type: str, input_name: str) -> bool:
        """Whether the widget is followed by a `control_after_generate` value."""
        spec = self.input_spec(class_type, input_name)
        return spec is not None and spec.is_widget and spec.has_control_after_generate

    def combo_options(self, class_type: str, input_name: str) -> tuple[Any, ...] | None:
        """The options of a combo input, or None if the input is not a combo."""
        spec = self.input_spec(class_type, input_name)
        return None if spec is None else spec.choices

    def value_range(self, class_type: str, input_name: str) -> tuple[Any, Any]:
        """`(min, max)` of a numeric input; either is None when undeclared."""
        spec = self.input_spec(class_type, input_name)
        return (None, None) if spec is None else (spec.min, spec.max)

    def is_output_node(self, class_type: str) -> bool:
        """Whether the class is an output node (a prompt needs at least one)."""
        return class_type in self._raw and self.node_class(class_type).output_node

    def output_types(self, class_type: str) -> tuple[Any, ...]:
        """The class's output types by slot (`RETURN_TYPES`)."""
        return self.node_class(class_type).output_types


def _parse_class(name: str, raw: Mapping[str, Any]) -> NodeClass:
    sections = _mapping(raw.get("input"))
    order = _mapping(raw.get("input_order"))
    inputs: list[InputSpec] = []
    for section in ("required", "optional"):
        declared = _mapping(sections.get(section))
        listed = order.get(section)
        names = [n for n in listed if n in declared] if isinstance(listed, list) else []
        names += [n for n in declared if n not in names]  # no input_order (older servers): dict order
        inputs.extend(_parse_input(n, declared[n], required=section == "required") for n in names)
    outputs = raw.get("output")
    display = raw.get("display_name")
    return NodeClass(
        name=name,
        inputs=tuple(inputs),
        output_types=tuple(outputs) if isinstance(outputs, list) else (),
        output_node=bool(raw.get("output_node")),
        display_name=display if isinstance(display, str) else None,
    )


def _parse_input(name: str, raw: Any, *, required: bool) -> InputSpec:
    raw = raw if isinstance(raw, list | tuple) and raw else ["*"]
    kind = raw[0]
    options = raw[1] if len(raw) > 1 and isinstance(raw[1], Mapping) else {}
    if isinstance(kind, list | tuple):
        return InputSpec(name, "COMBO", options, required, tuple(kind), legacy_combo=True)
    if kind == "COMBO":
        listed = options.get("options")
        return InputSpec(name, "COMBO", options, required, tuple(listed) if isinstance(listed, list) else ())
    return InputSpec(name, str(kind), options, required)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def merge_object_infos(infos: Iterable[ObjectInfo]) -> ObjectInfo:
    """One catalogue covering a fleet: every class any server has, each combo the union of its options.

    Requests are checked against it (a model no server has is a request error); which server may
    run which job is decided per server afterwards.
    """
    # Copy-on-write: a class is shared with the first server that has it (nothing here mutates it) and copied
    # only when another server adds combo options to it. A deep copy of the fleet's catalogue per batch cost
    # ~180 ms of CPU before the first prompt.
    merged: dict[str, Mapping[str, Any]] = {}
    copied: set[str] = set()
    for info in infos:
        for class_type, spec in info.raw.items():
            mine = merged.get(class_type)
            if mine is None:
                merged[class_type] = spec
                continue
            if mine is spec:
                continue
            for section in ("required", "optional"):
                ours = (mine.get("input") or {}).get(section) or {}
                for name, entry in ((spec.get("input") or {}).get(section) or {}).items():
                    if name not in ours or (union := _union_combo(ours[name], entry)) == ours[name]:
                        continue
                    if class_type not in copied:
                        mine = merged[class_type] = _own_inputs(mine)
                        copied.add(class_type)
                    mine["input"][section][name] = union
                    ours = mine["input"][section]
    return ObjectInfo(merged)


def _own_inputs(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of a class spec whose input sections may be changed without touching the original."""
    inputs = spec.get("input") or {}
    sections = {section: dict(inputs[section]) for section in ("required", "optional") if inputs.get(section)}
    own_inputs = {**inputs, **sections}
    return {**spec, "input": own_inputs}


def _union_combo(mine: Any, theirs: Any) -> Any:
    # Old spelling `[[options], {...}]`, new spelling `["COMBO", {"options": [...]}]`.
    if isinstance(mine, list) and isinstance(theirs, list) and mine and theirs:
        if isinstance(mine[0], list) and isinstance(theirs[0], list):
            return [mine[0] + [option for option in theirs[0] if option not in mine[0]], *mine[1:]]
        if mine[0] == "COMBO" == theirs[0] and len(mine) > 1 and len(theirs) > 1:
            options = list(mine[1].get("options", []))
            options += [option for option in theirs[1].get("options", []) if option not in options]
            return ["COMBO", {**mine[1], "options": options}, *mine[2:]]
    return mine
