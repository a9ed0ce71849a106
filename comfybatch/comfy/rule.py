"""What a value may be, and the one check of a value against it: the rule engine.

`values.py` names the built-in rules of batch parameters (`width`, `steps`…) on top of it, the request model and
the expansion apply them, and `spec_rule` builds the rule a server's `/object_info` declares for an input, which
the expansion applies to sheet cells and `preflight` to a workflow's values. It lives in `comfy/` because
`preflight` needs it and `comfy/` imports nothing above itself; it needs only the standard library and
`object_info`.
"""

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from comfybatch.comfy.object_info import InputSpec

Kind = Literal["int", "float", "number", "bool", "str", "combo", "any"]
Bound = Literal["min", "max", "multiple_of"]

SPEC_KINDS: dict[str, Kind] = {"INT": "int", "FLOAT": "float", "BOOLEAN": "bool", "STRING": "str"}
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


class InvalidValue(ValueError):
    """One value broke one rule; the caller knows where the value came from."""


class OutOfRange(InvalidValue):
    """A number below the rule's `min`, above its `max` or off its `multiple_of` (`bound`, whose value is `limit`),
    so a caller that speaks another dialect (preflight speaks ComfyUI's) can say it in its own words."""

    def __init__(self, message: str, bound: Bound, limit: Any) -> None:
        super().__init__(message)
        self.bound, self.limit = bound, limit


def spec_rule(spec: InputSpec | None) -> Rule | None:
    """The rule `/object_info` declares for an input: a combo's options, or its kind with its numeric min and max.

    None for an input it says nothing checkable about (no spec, an option-less combo, a linked type such as IMAGE).
    `step` is left out: ComfyUI 0.3.75 accepts values off the step, so nothing here refuses them.
    """
    if spec is None or spec.is_combo:
        return Rule("combo", choices=spec.choices) if spec is not None and spec.choices else None
    low, high = (v if isinstance(v, int | float) and not isinstance(v, bool) else None for v in (spec.min, spec.max))
    return Rule(kind, min=low, max=high) if (kind := SPEC_KINDS.get(spec.type)) else None


def apply_rule(rule: Rule, value: Any) -> Any:
    """`value` converted per `rule`, then checked against its bounds (`check_bounds`).

    Raises:
        InvalidValue: the message says what was expected and what was found (`OutOfRange` for a bound).
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
    check_bounds(rule, number)
    return number


def check_bounds(rule: Rule, number: Any) -> None:
    """Refuse a number below `rule.min`, above `rule.max` or off `rule.multiple_of`, in that order.

    Raises:
        OutOfRange: the first bound broken.
        TypeError: `number` cannot be compared with the bounds (a caller that converts first never sees it).
    """
    if rule.min is not None and number < rule.min:
        raise OutOfRange(f"must be at least {show_value(rule.min)}, got {show_value(number)}", "min", rule.min)
    if rule.max is not None and number > rule.max:
        raise OutOfRange(f"must be at most {show_value(rule.max)}, got {show_value(number)}", "max", rule.max)
    if rule.multiple_of and number % rule.multiple_of:
        message = f"must be a multiple of {rule.multiple_of}, got {show_value(number)}"
        raise OutOfRange(message, "multiple_of", rule.multiple_of)


def show_value(value: Any) -> str:
    """A value as a message shows it: text quoted, whole floats without `.0`, other types by name."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return str(value) if isinstance(value, int | float) else type(value).__name__


def control_character(text: str) -> str | None:
    """Why `text` is refused for its control characters (tab, newline and CR are fine), or None."""
    if (found := _CONTROL.search(text)) is None:
        return None
    return f"contains the control character U+{ord(found.group()):04X} at position {found.start()}"


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
