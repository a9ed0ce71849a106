"""The CLI against live servers: /object_info, and `run --server` on a Prefect server with saved blocks."""

import asyncio
import csv
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks.fleet import saved_servers
from comfybatch.blocks.server import ComfyUIServer, name_from_url
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import FIXTURES, FleetServer, SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS
from tests.support import graphs
from tests.support.batches import through_graph
from tests.unit.test_cli import _cli


def test_cli_validate_against_server_names_missing_checkpoint(comfy_server: FleetServer, tmp_path: Path) -> None:
    """A checkpoint the server lacks is reported with node, class and input, and nothing is queued."""
    graph = json.loads(graphs.TINY_TXT2IMG.read_text())
    graph["1"]["inputs"]["ckpt_name"] = "absent-model.safetensors"
    source = tmp_path / "wf.json"
    source.write_text(json.dumps(graph))

    done = _cli("validate", source, "--server", comfy_server.url)

    assert done.returncode == 2
    assert "Load Checkpoint (node 1), input 'ckpt_name'" in done.stderr


def test_cli_convert_against_server(comfy_server: FleetServer) -> None:
    """convert --server prints API format on stdout."""
    done = _cli("convert", FIXTURES / "ui" / "reroute_notes.json", "--server", comfy_server.url)

    assert done.returncode == 0, done.stderr
    assert {node["class_type"] for node in json.loads(done.stdout).values()} >= {"SaveImage"}


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Prefect server of this module's own, where the saved blocks live."""
    server = LocalPrefectServer(tmp_path_factory.mktemp("cli-prefect"))
    server.start()
    try:
        yield server.api_url
    finally:
        server.stop()


def _bare_env(**updates: str) -> dict[str, str]:
    """This environment without fleet, comfybatch or Prefect settings, plus `updates`."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("COMFYUI_", "COMFYBATCH_", "PREFECT_"))
    }
    return {**env, **updates}


@pytest.mark.anyio
@PREFECT_SOCKETS
async def test_cli_run_server_renders_only_on_the_named_server(
    comfy_fleet: SuiteFleet, prefect_api: str, tmp_path: Path
) -> None:
    """`run --server B` with a Prefect UI block for server A saved and enabled renders every image on B (the
    manifest's server column), and leaves A's block alone and no block for B behind."""
    if len(comfy_fleet.servers) < 2:
        pytest.skip("needs two servers")
    server_a, server_b = comfy_fleet.servers[:2]
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        await ComfyUIServer(url=server_a.url, slots=2).asave("studio-a", overwrite=True)
    workflow = tmp_path / "delay.json"
    workflow.write_text(json.dumps(through_graph("ComfybatchDelay", seconds=0.3)))
    nonces = [f"cli-{uuid.uuid4().hex[:8]}-{index}" for index in range(4)]

    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "comfybatch.cli", "run", "--workflow", str(workflow), "--bind",
         "prompt=2.inputs.nonce", *(arg for nonce in nonces for arg in ("--prompt", nonce)), "--server",
         server_b.url, "--out", str(tmp_path / "out"), "--name", "only-b"],
        cwd=tmp_path, env=_bare_env(PREFECT_API_URL=prefect_api, PREFECT_HOME=str(tmp_path / "prefect")),
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    with (tmp_path / "out" / "only-b" / "manifest.csv").open(newline="") as manifest:
        servers = [row["server"] for row in csv.DictReader(manifest)]
    assert servers == [name_from_url(server_b.url)] * 4
    with temporary_settings(updates={PREFECT_API_URL: prefect_api}):
        saved = await saved_servers()
    assert [(server.name, server.source) for server in saved] == [("studio-a", "ui")]


def test_cli_run_with_no_prefect_server_configured_renders_every_image(comfy_fleet: SuiteFleet, tmp_path: Path) -> None:
    """With no PREFECT_API_URL, Prefect starts its temporary server; slots, leases and progress go to it too, so
    every image renders (issue 11 §4: every job failed with UnsupportedProtocol)."""
    workflow = tmp_path / "delay.json"
    workflow.write_text(json.dumps(through_graph("ComfybatchDelay", seconds=0.1)))
    nonces = [f"temp-{uuid.uuid4().hex[:8]}-{index}" for index in range(3)]

    done = subprocess.run(
        [sys.executable, "-m", "comfybatch.cli", "run", "--workflow", str(workflow), "--bind",
         "prompt=2.inputs.nonce", *(arg for nonce in nonces for arg in ("--prompt", nonce)), "--server",
         comfy_fleet.servers[0].url, "--out", str(tmp_path / "out"), "--name", "temporary-prefect"],
        cwd=tmp_path, env=_bare_env(PREFECT_HOME=str(tmp_path / "prefect")),
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    with (tmp_path / "out" / "temporary-prefect" / "manifest.csv").open(newline="") as manifest:
        assert [row["status"] for row in csv.DictReader(manifest)] == ["done"] * 3
