"""Live drain on real ComfyUI and Prefect: a running batch stops sending prompts to a drained server."""

import asyncio

import pandas as pd
import pytest

from comfybatch.blocks.drain import draining_servers, set_draining
from comfybatch.cli import drain, undrain
from comfybatch.flows.batch import generate_batch
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.flows.conftest import PREFECT_SOCKETS, server_names
from tests.support import batches

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS]
_TAKES_EFFECT_S = 5.0  # the bound for a fleet change to reach running batches


async def test_drained_server_gets_no_new_prompts_and_undrain_restores_it(
    batch_settings: Settings, comfy_fleet: SuiteFleet
) -> None:
    """Drained 3 s into a batch on two servers, the second server is sent no prompt from 5 s after the command
    on, while the batch still completes on the first; `fleet undrain` takes it off the list."""
    names = server_names(comfy_fleet)
    kept, drained = names
    spec = batches.delay_spec("live-drain", seconds=0.5, count=40, servers=names)
    running = asyncio.create_task(generate_batch(spec))
    try:
        await asyncio.sleep(3.0)
        assert await drain(drained) == 0
        drained_at = pd.Timestamp.now(tz="UTC")
        assert drained in await draining_servers()
        report = await running
    finally:
        await set_draining(drained, False)  # the suite's servers serve the next test

    rows = read_manifest(OutputStore(batch_settings.output_root), "live-drain")
    assert rows is not None
    assert report.done == 40
    later = rows[rows["queued_at"] > drained_at + pd.Timedelta(seconds=_TAKES_EFFECT_S)]
    assert len(later) > 0, "the batch ended before the drain could be seen; make it longer"
    assert set(later["server"]) == {kept}
    assert (rows["server"] == drained).any()  # it did work before the drain

    assert await undrain(drained) == 0
    assert drained not in await draining_servers()
