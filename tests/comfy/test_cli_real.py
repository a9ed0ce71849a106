"""The CLI against a live server's /object_info."""

import json
from pathlib import Path

from tests.conftest import FIXTURES, FleetServer
from tests.support import graphs
from tests.unit.test_cli import _cli


def test_cli_validate_against_server_names_missing_checkpoint(comfy_server: FleetServer, tmp_path: Path) -> None:
    """A checkpoint the server lacks is reported with node, class and input, and nothing is queued."""
    graph = json.loads(graphs.TINY_TXT2IMG.read_text())
    graph["1"]["inputs"]["ckpt_name"] = "absent-model.safetensors"
    source = tmp_path / "wf.json"
    source.write_text(json.dumps(graph))

    done = _cli("validate", source, "--server", comfy_server.url)

    assert done.returncode == 2
    assert "node 1 (CheckpointLoaderSimple) input 'ckpt_name'" in done.stderr


def test_cli_convert_against_server(comfy_server: FleetServer) -> None:
    """convert --server prints API format on stdout."""
    done = _cli("convert", FIXTURES / "ui" / "reroute_notes.json", "--server", comfy_server.url)

    assert done.returncode == 0, done.stderr
    assert {node["class_type"] for node in json.loads(done.stdout).values()} >= {"SaveImage"}
