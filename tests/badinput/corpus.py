"""The bad-input corpus (`cases.toml`): loading cases, writing their input files, and the checks every case shares."""

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import FIXTURES

CASES_FILE = Path(__file__).with_name("cases.toml")
KEPT = "out/kept/00000_kept_1.png"  # "already produced": every case must leave it as it was
KEPT_BYTES = b"\x89PNG\r\n\x1a\n an image rendered before the bad request"
_TRACEBACK_MARKS = ("Traceback (most recent call last)", 'File "/')
_CODE_WORDS = ("Value error,", "{0,62}", "[a-z0-9]")  # pydantic's prefix and the name pattern: no user reads these


@dataclass(frozen=True)
class Case:
    """One bad input: where it goes in, and what must come out."""

    id: str
    channel: str
    about: str
    raw: dict[str, Any]
    expect: dict[str, Any] = field(default_factory=dict)

    def param(self) -> Any:
        marks = [pytest.mark.xfail(strict=True, reason=self.raw["xfail"])] if "xfail" in self.raw else []
        return pytest.param(self, id=self.id, marks=marks)


def cases(channel: str) -> list[Any]:
    """The corpus entries of one channel (`api`, `cli`, `params`), as pytest params."""
    table = tomllib.loads(CASES_FILE.read_text(encoding="utf-8"))
    chosen = [Case(c["id"], c["channel"], c["about"], c, c.get("expect", {})) for c in table["case"]]
    return [case.param() for case in chosen if case.channel == channel]


def prepare(case: Case, root: Path) -> Path:
    """Write the case's input files under `root/in` and the already-produced file; return `root/in`."""
    inputs = root / "in"
    inputs.mkdir(parents=True)
    (root / KEPT).parent.mkdir(parents=True)
    (root / KEPT).write_bytes(KEPT_BYTES)
    for name, spec in case.raw.get("files", {}).items():
        (inputs / name).write_bytes(_file_bytes(spec))
    return inputs


def expand_placeholders(value: Any, inputs: Path) -> Any:
    """`{in}` in any string of `value` becomes the case's input folder."""
    if isinstance(value, str):
        return value.replace("{in}", str(inputs))
    if isinstance(value, list):
        return [expand_placeholders(item, inputs) for item in value]
    if isinstance(value, dict):
        return {key: expand_placeholders(item, inputs) for key, item in value.items()}
    return value


def check_message(case: Case, message: str) -> None:
    """The message names what the case expects, and shows no traceback."""
    for part in case.expect.get("contains", []):
        assert part in message, f"{part!r} not in {message!r}"
    assert not any(mark in message for mark in _TRACEBACK_MARKS), message
    assert not any(word in message for word in _CODE_WORDS), message


def check_nothing_lost_or_escaped(root: Path, before: set[Path]) -> None:
    """The already-produced file is intact, and nothing was written outside `root/out` (the output root)."""
    assert (root / KEPT).read_bytes() == KEPT_BYTES
    outside = {path for path in root.rglob("*") if path.is_file() and not path.is_relative_to(root / "out")}
    assert outside == before, f"written outside the output root: {sorted(outside - before)}"
    assert not (root.parent / "escaped").exists()


def files_outside_out(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file() and not path.is_relative_to(root / "out")}


def graph(spec: dict[str, Any]) -> dict[str, Any]:
    """A stored API graph (`base`, under tests/fixtures) with `set` edits: [node, "class_type" | input, value]."""
    nodes: dict[str, Any] = json.loads((FIXTURES / spec["base"]).read_text(encoding="utf-8"))
    for node_id, key, value in spec.get("set", []):
        if key == "class_type":
            nodes[node_id]["class_type"] = value
        else:
            nodes[node_id]["inputs"][key] = value
    return nodes


def _file_bytes(spec: dict[str, Any]) -> bytes:
    if "graph" in spec:
        return json.dumps(graph(spec["graph"])).encode()
    if "rows" in spec:  # a generated sheet: a header, then `rows` numbered prompts
        lines = [spec.get("header", "prompt")] + [f"a cat number {n}" for n in range(spec["rows"])]
        return ("\n".join(lines) + "\n").encode()
    data: bytes = spec["text"].encode(spec.get("encoding", "utf-8"))
    return data
