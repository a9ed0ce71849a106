"""Value rules for batch parameters: conversion and range checks shared by `BatchSpec` and `expansion`.

Pure and dependency-free, so the request model can check well-known parameters (`width`, `steps`…) as soon
as a request arrives, with the same messages the expansion gives for sheet cells.
"""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["int", "float", "number", "bool", "str", "combo", "any"]

# ComfyUI nodes.py MAX_RESOLUTION; EmptyLatentImage batch_size and KSampler steps maxima (0.3.75).
MAX_RESOLUTION = 16384
# Longer than any prompt a CLIP encoder reads (77 tokens per chunk), and short enough that a request's
# prompts fit in the flow run's parameters.
MAX_PROMPT_CHARS = 10_000
_TRUE, _FALSE = frozenset({"true", "yes", "1"}), frozenset({"false", "no", "0"})
# C0 controls except tab, newline and carriage return; DEL; C1 controls. Never meant in a prompt, and
# ANSI escapes in one would drive the terminal that prints it.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class Rule:
    """What one parameter accepts."""

    kind: Kind
    min: float | None = None
    max: float | None = None
    multiple_of: int | None = None
    choices: tuple[Any, ...] = ()
    non_empty: bool = False
    max_length: int | None = None


# Always applied to these names; a server's /object_info adds its own rules after them.
BUILTIN_RULES: dict[str, Rule] = {
    "width": Rule("int", min=16, max=MAX_RESOLUTION, multiple_of=8),
    "height": Rule("int", min=16, max=MAX_RESOLUTION, multiple_of=8),
    "steps": Rule("int", min=1, max=10000),
    "cfg": Rule("float"),
    "seed": Rule("int", min=0),
    "denoise": Rule("float", min=0, max=1),
    "batch_size": Rule("int", min=1, max=4096),
    "prompt": Rule("str", non_empty=True, max_length=MAX_PROMPT_CHARS),
    "negative_prompt": Rule("str", max_length=MAX_PROMPT_CHARS),
    **{name: Rule("str") for name in ("sampler", "scheduler", "checkpoint")},
}


class InvalidValue(ValueError):
    """One value broke one rule; the caller knows where the value came from."""


def control_character(text: str) -> str | None:
    """Why `text` is refused for its control characters (tab, newline and CR are fine), or None."""
    if (found := _CONTROL.search(text)) is None:
        return None
    return f"contains the control character U+{ord(found.group()):04X} at position {found.start()}"


def apply_rule(rule: Rule, value: Any) -> Any:
    """`value` converted per `rule`.

    Raises:
        InvalidValue: the message says what was expected and what was found.
    """
    if value is None:
        raise InvalidValue("expected a value, got null")
    if (convert := _CONVERTERS.get(rule.kind)) is not None:
        return convert(value, rule)
    number = _number(value)
    if rule.kind == "int" and isinstance(number, float):  # pandas reads int columns with blanks as floats: 512.0
        if not number.is_integer():
            raise InvalidValue(f"expected a whole number, got {number}")
        number = int(number)
    elif rule.kind == "float":
        number = float(number)
    if rule.min is not None and number < rule.min:
        raise InvalidValue(f"must be at least {show_value(rule.min)}, got {show_value(number)}")
    if rule.max is not None and number > rule.max:
        raise InvalidValue(f"must be at most {show_value(rule.max)}, got {show_value(number)}")
    if rule.multiple_of and number % rule.multiple_of:
        raise InvalidValue(f"must be a multiple of {rule.multiple_of}, got {show_value(number)}")
    return number


def show_value(value: Any) -> str:
    """A value as a message shows it: text quoted, whole floats without `.0`, other types by name."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value) if isinstance(value, int | float) else type(value).__name__


def _number(value: Any) -> int | float:
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text) if re.fullmatch(r"[+-]?\d+", text) else float(text)
        except ValueError:
            raise InvalidValue(f"expected a number, got {_short(value)}") from None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidValue(f"expected a number, got {show_value(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidValue(f"expected a finite number, got {value}")
    return value


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _boolean(value: Any, rule: Rule) -> bool:
    word = str(value).strip().lower() if isinstance(value, str | int) else ""
    if isinstance(value, bool) or word in _TRUE | _FALSE:
        return value if isinstance(value, bool) else word in _TRUE
    raise InvalidValue(f"expected true or false, got {show_value(value)}")


def _text(value: Any, rule: Rule) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        text = show_value(value)  # a Parquet or pandas number column: 1984.0 is the prompt "1984"
    else:
        raise InvalidValue(f"expected text, got {show_value(value)}")
    if rule.non_empty and not text.strip():
        raise InvalidValue("must not be empty")
    if rule.max_length is not None and len(text) > rule.max_length:
        raise InvalidValue(f"is {len(text):,} characters long; at most {rule.max_length:,} are allowed")
    if problem := control_character(text):
        raise InvalidValue(problem)
    return text


def _choice(value: Any, rule: Rule) -> Any:
    for choice in rule.choices:  # sheet cells are text: "1" matches an option 1
        if (type(choice) is type(value) and choice == value) or str(choice) == str(value):
            return choice
    listed = ", ".join(str(choice) for choice in rule.choices[:10]) + (", …" if len(rule.choices) > 10 else "")
    raise InvalidValue(f"{show_value(value)} is not one of the {len(rule.choices)} options: {listed}")


def _json(value: Any, rule: Rule) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise InvalidValue(f"expected JSON data, got {show_value(value)}") from None
    return value


_CONVERTERS: dict[Kind, Callable[[Any, Rule], Any]] = {"any": _json, "combo": _choice, "bool": _boolean, "str": _text}


def non_finite(value: Any, where: str = "") -> str | None:
    """Where in `value` (JSON data) a NaN or an infinity sits, e.g. `"nodes[0].x = nan"`, or None.

    JSON has no such numbers; Python's parser accepts `NaN`, `Infinity` and `1e400` and Prefect cannot store them.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'} = {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        place = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        if found := non_finite(item, place):
            return found
    return None
