"""What a person reads when a request, sheet or workflow is wrong: one sentence per problem in the user's terms.

The one translation from validation and preflight problems (pydantic errors, `RequestProblem`, `NodeProblem`,
unreachable servers) into sentences, used by the API's 4xx bodies, the CLI, plan logs and the flow's failures.
Each `Problem` keeps the machine-readable place beside its sentence (field path, 1-based item, row, column, node),
so a page can highlight what is wrong.
"""

import difflib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import ValidationError

_INDEX = re.compile(r"\[(\d+)\]")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
# pydantic names the member of a union it tried (`str`, `dict[str,any]`, `function-after[...]`) in `loc`.
_UNION_MEMBER = re.compile(r"^(str|int|float|bool|none|list\[.*\]|dict\[.*\]|[a-z-]+\[.*\])$")
# Singular words for the request's lists, so `prompts[1]` reads "prompt 2".
_LIST_WORDS = {"prompts": "prompt", "images": "image", "zipped": "zipped group"}
_SHOWN_CHARS = 60
# What BATCH_NAME_PATTERN (`models.py`) allows, in words: no user should have to read a regex.
NAME_RULE = "lowercase letters, digits and dashes, starting with a letter or digit, at most 63 characters"


@dataclass(frozen=True)
class Problem:
    """One problem as a person reads it (`message`, place included) and as a page locates it."""

    message: str
    field: str | None = None  # request field path as sent: "defaults.width", "prompts[1]"
    item: int | None = None  # 1-based position in the list the field indexes (prompts[1] -> 2)
    row: int | None = None  # spreadsheet row as a spreadsheet shows it (header = row 1)
    column: str | None = None
    node: str | None = None  # node id in the workflow graph
    node_title: str | None = None  # the node's title, or its class in words
    input: str | None = None  # the node's input
    reason: str = ""  # `message` without the request place (field, row, column) it starts with

    def __post_init__(self) -> None:
        if not self.reason:
            object.__setattr__(self, "reason", self.message)

    def __str__(self) -> str:
        return self.message

    def as_json(self) -> dict[str, Any]:
        """The API's shape: every key present (null when unknown), so a client reads one schema."""
        return asdict(self)


def class_words(class_type: str) -> str:
    """A node class in words: `CheckpointLoaderSimple` -> "Checkpoint Loader Simple", `VAEDecode` -> "VAE Decode"."""
    words = _CAMEL.sub(" ", class_type).split()
    if len(words) > 1 and len(words[0]) == 1:  # KSampler, not "K Sampler"
        words[:2] = [words[0] + words[1]]
    return " ".join(words) or class_type


def node_place(node_id: str, class_type: str | None, input_name: str | None = None, title: str | None = None) -> str:
    """Where in a graph: `Load Checkpoint (node 1), input 'ckpt_name'`; the whole graph is "the workflow"."""
    if node_id == "-":
        return "the workflow"
    name = title or (class_words(class_type) if class_type else "")
    place = f"{name} (node {node_id})" if name else f"node {node_id}"
    return f"{place}, input '{input_name}'" if input_name else place


def field_words(field: str) -> str:
    """A request field with list positions counted from 1: `prompts[1]` -> "prompt 2", `sweep.zipped[0].width` ->
    "sweep.zipped group 1, width"."""
    words = field
    for plural, singular in _LIST_WORDS.items():
        words = re.sub(rf"\b{plural}\[(\d+)\]\.?", _numbered(singular), words)
    return _INDEX.sub(lambda found: f" {int(found.group(1)) + 1}", words).rstrip(", ")


def _numbered(singular: str) -> Callable[[re.Match[str]], str]:
    return lambda found: f"{singular} {int(found.group(1)) + 1}, "


def item_of(field: str | None) -> int | None:
    """The 1-based position of the first list index in `field` (`images[0]` -> 1), or None."""
    found = _INDEX.search(field or "")
    return int(found.group(1)) + 1 if found else None


def request_problem(message: str, *, field: str | None = None, row: int | None = None,
                    column: str | None = None) -> Problem:  # fmt: skip
    """A request, sheet or input problem: `row 3, column 'width': …`, `prompt 2: …` or `sheet: …`."""
    where = [f"row {row}" if row is not None else "", f"column '{column}'" if column else "",
             field_words(field) if field and row is None else ""]  # fmt: skip
    place = ", ".join(part for part in where if part)
    return Problem(f"{place}: {message}" if place else message, field=field, item=item_of(field), row=row,
                   column=column, reason=message)  # fmt: skip


def node_problem(message: str, *, node_id: str, class_type: str | None = None, input_name: str | None = None,
                 title: str | None = None) -> Problem:  # fmt: skip
    """A workflow problem, the node named by its title (or class in words) and id."""
    return Problem(f"{node_place(node_id, class_type, input_name, title)}: {message}", node=node_id if node_id != "-"
                   else None, node_title=title or (class_words(class_type) if class_type else None),
                   input=input_name)  # fmt: skip


def validation_problems(exc: ValidationError | Sequence[Mapping[str, Any]], *, skip: int = 0,
                        fields: Iterable[str] = ()) -> list[Problem]:  # fmt: skip
    """pydantic's errors as sentences: `name: use lowercase letters…`, `defaults.width: must be a multiple of 8`.

    `skip` drops leading `loc` parts (FastAPI's "body"); `fields` are the model's own, to suggest for a misspelt one.
    Union members' errors about one field become one sentence.
    """
    errors = exc.errors() if isinstance(exc, ValidationError) else exc
    known = list(fields)
    by_field: dict[str, list[Mapping[str, Any]]] = {}
    for error in errors:
        by_field.setdefault(_path(error.get("loc", ())[skip:]), []).append(error)
    problems = []
    for field, group in by_field.items():
        ours = [e for e in group if e.get("type") in ("invalid_value", "value_error")]
        first = ours[0] if ours else group[0]
        problems.append(_one(field, first, known, union=len(group) > 1 and not ours))
    return problems


def problems_of(exc: BaseException) -> list[Problem]:
    """The problems an error of ours carries (`BatchRequestError`, `WorkflowError`, `ServerIncompatible`), each with
    its place; an error without any is one problem, its own message."""
    found = []
    for problem in getattr(exc, "problems", ()):
        if hasattr(problem, "node_id"):  # NodeProblem
            found.append(node_problem(problem.message, node_id=problem.node_id, class_type=problem.class_type,
                                      input_name=problem.input_name, title=problem.title))  # fmt: skip
        else:  # RequestProblem
            found.append(request_problem(problem.message, field=problem.field, row=problem.row, column=problem.column))
    return found or [Problem(str(getattr(exc, "summary", None) or exc))]


def validation_text(exc: ValidationError, *, fields: Iterable[str] = ()) -> str:
    """The problems of a refused request model, one per line (the CLI's and the flow's message)."""
    return "\n".join(f"  - {problem}" for problem in validation_problems(exc, fields=fields))


def validation_line(exc: ValidationError) -> str:
    """pydantic's errors on one line, each as `loc: msg` (`slots: Input should be greater than 0; url: …`): the
    message of a config entry or a sheet that a model refused."""
    return "; ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in exc.errors())


def unreachable_line(unreachable: Mapping[str, str], total: int) -> str:
    """Servers that did not answer, in one line: `2 of 3 servers did not answer: gpu-a, gpu-b (connection refused)`."""
    names = ", ".join(sorted(unreachable))
    reasons = sorted(set(unreachable.values()))
    why = reasons[0] if len(reasons) == 1 else "; ".join(f"{n}: {r}" for n, r in sorted(unreachable.items()))
    count = "the only server" if total == 1 else f"{len(unreachable)} of {total} servers"
    verb = "does" if total == 1 else "do" if len(unreachable) > 1 else "does"
    return f"{count} {verb} not answer: {names} ({why})"


def why_unreachable(exc: BaseException) -> str:
    """Why a server did not answer, in words, from the transport error under ours (never its repr)."""
    cause: BaseException | None = exc
    while cause is not None:
        name = type(cause).__name__
        if "Timeout" in name:
            return "timed out"
        if name in ("ConnectError", "ConnectionRefusedError"):
            return "connection refused"
        if name in ("RemoteProtocolError", "ReadError", "WriteError"):
            return "connection dropped"
        cause = cause.__cause__
    text = str(exc)
    if (found := re.search(r"-> (\d{3})", text)) is not None:
        return f"answered HTTP {found.group(1)}"
    return re.sub(r"^\[[^\]]*\] ", "", text)[:120]


def _path(loc: Sequence[Any]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif not _UNION_MEMBER.match(str(part)):
            path += f".{part}" if path else str(part)
    return path


def _one(field: str, error: Mapping[str, Any], known: list[str], *, union: bool) -> Problem:
    kind, ctx, value = error.get("type", ""), error.get("ctx") or {}, error.get("input")
    place = ctx.get("field") or field
    if kind == "invalid_value":  # our validators: the message names its own field ("defaults.width: …")
        sentence = str(ctx.get("sentence") or error.get("msg"))
        return Problem(sentence, field=place, item=item_of(place),
                       reason=sentence.removeprefix(f"{field_words(place)}: "))  # fmt: skip
    if kind == "json_invalid":  # its `loc` is a character position, not a field
        return Problem(f"the request body is not valid JSON ({ctx.get('error', 'JSON decode error')})")
    message = _sentence(kind, ctx, value, str(error.get("msg", "")), known, field, union=union)
    if kind == "extra_forbidden":  # the field is the problem: "'promts' is not a field…"
        return Problem(f"'{place}' {message}", field=place or None)
    shown = field_words(place) if place else "the request body"
    return Problem(f"{shown}: {message}", field=place or None, item=item_of(place), reason=message)


def _sentence(kind: str, ctx: Mapping[str, Any], value: Any, msg: str, known: list[str], field: str, *,
              union: bool) -> str:  # fmt: skip
    got = f", got {_shown(value)}" if value is not None and not isinstance(value, dict | list) else ""
    if kind == "string_pattern_mismatch" and field == "name":
        return f"{_shown(value)} is not a batch name: use {NAME_RULE} (e.g. 'spring-catalog')"
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(field.rsplit(".", 1)[-1], known, n=1)
        return "is not a field of a batch request" + (f"; did you mean '{close[0]}'?" if close else "")
    if kind == "missing":
        return "is required"
    bounds = {"greater_than_equal": "at least {ge}", "greater_than": "more than {gt}",
              "less_than_equal": "at most {le}", "less_than": "less than {lt}"}  # fmt: skip
    if kind in bounds:
        return f"must be {bounds[kind].format(**ctx)}{got}"
    if union and field == "workflow":
        return f"expected a template name or a ComfyUI workflow (a JSON object), got {_kind_of(value)}"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return f"{msg[0].lower()}{msg[1:]}{got}" if msg else f"has the wrong type{got}"
    return msg[0].lower() + msg[1:] if msg else kind


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[:_SHOWN_CHARS]}…"


def _kind_of(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    return "nothing" if value is None else f"{type(value).__name__} {_shown(value)}"
