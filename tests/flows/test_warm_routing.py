"""Warm-model routing on real ComfyUI: a batch alternating two checkpoints loads each at most once per server."""

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.flows.batch import generate_batch
from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import get_settings
from comfybatch.testing.warm import add_checkpoint_names, checkpoint_loads
from tests.conftest import FIXTURES, FleetServer, SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, use_test_settings

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]
MODELS = ["warm-a.ckpt", "warm-b.ckpt"]
STEPS = 12


@pytest.fixture
def two_checkpoint_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[LocalComfyServer]]:
    """Two fresh servers of their own (their logs count loads from zero), each with MODELS as checkpoints."""
    fleet = LocalFleet(tmp_path_factory.mktemp("warm"), names=["warm-0", "warm-1"])
    assert fleet.checkpoint is not None
    for server in fleet.servers:
        add_checkpoint_names(server, fleet.checkpoint, MODELS)
    with fleet:
        yield fleet.servers


def alternating_spec(name: str, servers: list[str], *, count: int) -> BatchSpec:
    """`count` tiny txt2img jobs whose checkpoint alternates A, B, A, B…, each with its own seed."""
    graph = json.loads((FIXTURES / "api" / "txt2img_tiny.json").read_text())
    graph["5"]["inputs"]["steps"] = STEPS  # a job outlasts a load, as on a GPU, so the servers stay in step
    return BatchSpec(
        name=name, workflow=graph,
        bindings={"ckpt": "1.inputs.ckpt_name", "seed": "5.inputs.seed", "prompt": "2.inputs.text"},
        sweep=Sweep(zipped=[{"ckpt": [MODELS[index % 2] for index in range(count)],
                             "seed": list(range(1, count + 1)), "prompt": ["a cat"] * count}]),
        servers=servers,
    )  # fmt: skip


async def test_alternating_checkpoints_load_once_per_server(
    prefect_api: str, two_checkpoint_servers: list[LocalComfyServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """12 jobs alternating two checkpoints over two servers: every job renders, and no server reads a checkpoint
    from disk more often than the number of distinct checkpoints it was sent (round-robin swaps on most jobs)."""
    fleet = SuiteFleet([FleetServer(s.name, s.url, s) for s in two_checkpoint_servers], None)
    settings = use_test_settings(monkeypatch, fleet, tmp_path)
    assert settings.warm_routing
    names = [name_from_url(server.url) for server in two_checkpoint_servers]
    try:
        report = await generate_batch(alternating_spec("warm-routing", names, count=12))
    finally:
        get_settings.cache_clear()

    rows = read_manifest(OutputStore(settings.output_root), "warm-routing")
    assert rows is not None
    assert report.done == 12
    for server in two_checkpoint_servers:
        sent = rows[rows["server"] == name_from_url(server.url)]["param.ckpt"].nunique()
        assert checkpoint_loads(server) <= sent, f"{server.name}: {checkpoint_loads(server)} loads, {sent} models"
