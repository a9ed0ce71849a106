"""The `comfybatch` command: convert and validate, with clear errors and no tracebacks."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import FIXTURES

OBJECT_INFO = FIXTURES / "object_info_0.3.75.json"


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfybatch.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


def test_cli_convert_writes_api_format(tmp_path: Path) -> None:
    """convert turns a UI graph into API format in -o, exit 0."""
    out = tmp_path / "api.json"

    done = _cli("convert", FIXTURES / "ui" / "primitives.json", "--object-info", OBJECT_INFO, "-o", out)

    assert done.returncode == 0, done.stderr
    assert all("class_type" in node for node in json.loads(out.read_text()).values())


def test_cli_convert_unknown_node_names_it(tmp_path: Path) -> None:
    """A UI node whose class the server lacks fails with its id and type named, without a traceback."""
    ui = json.loads((FIXTURES / "ui" / "primitives.json").read_text())
    ui["nodes"][0]["type"] = "NoSuchNodeAnywhere"
    source = tmp_path / "ui.json"
    source.write_text(json.dumps(ui))

    done = _cli("convert", source, "--object-info", OBJECT_INFO)

    assert done.returncode == 2
    assert "NoSuchNodeAnywhere" in done.stderr
    assert f"node {ui['nodes'][0]['id']}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_convert_not_json_is_a_clear_error(tmp_path: Path) -> None:
    """A file that is not JSON is reported as such, with exit 2 and no traceback."""
    source = tmp_path / "broken.json"
    source.write_text('{"1": {"class_type": ')

    done = _cli("convert", source, "--object-info", OBJECT_INFO)

    assert done.returncode == 2
    assert "JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_convert_json_that_is_not_a_graph(tmp_path: Path) -> None:
    """JSON that is neither API nor UI format says what it found."""
    source = tmp_path / "list.json"
    source.write_text("[1, 2, 3]")

    done = _cli("convert", source, "--object-info", OBJECT_INFO)

    assert done.returncode == 2
    assert "Traceback" not in done.stderr


def test_cli_validate_reports_node_and_input(tmp_path: Path) -> None:
    """validate names the node, class and input a server would reject."""
    graph = json.loads((FIXTURES / "api" / "txt2img_tiny.json").read_text())
    graph["5"]["inputs"]["steps"] = 0
    source = tmp_path / "bad.json"
    source.write_text(json.dumps(graph))

    done = _cli("validate", source, "--object-info", OBJECT_INFO)

    assert done.returncode == 2
    assert "KSampler (node 5), input 'steps'" in done.stderr


def test_cli_validate_accepts_a_good_workflow() -> None:
    """A valid workflow validates with exit 0."""
    done = _cli("validate", FIXTURES / "api" / "txt2img_tiny.json", "--object-info", OBJECT_INFO)

    assert done.returncode == 0, done.stderr


def test_cli_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A workflow path that does not exist is named in the error."""
    done = _cli("validate", tmp_path / "nope.json", "--object-info", OBJECT_INFO)

    assert done.returncode == 2
    assert "nope.json" in done.stderr
