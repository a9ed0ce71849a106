"""The fault suite (issue 6 §2): ComfyUI and Prefect processes killed, restarted, cut off and hung mid-batch.

Each test runs on real processes and asserts on counts, never on times: the servers' node journals
(what ComfyUI executed), the manifest (what was stored) and Prefect's concurrency limits. The module
has ComfyUI and Prefect servers of its own; the orchestrator kill, whose leases outlive it, one more.
"""

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import httpx
import pandas as pd  # type: ignore[import-untyped]
import pytest
from prefect.client.orchestration import get_client

from comfybatch.blocks.server import limit_name, name_from_url
from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import load_workflow
from comfybatch.flows.batch import generate_batch
from comfybatch.local.fleet import LocalComfyServer
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings
from comfybatch.testing.proxy import TcpProxy
from tests.flows.conftest import PREFECT_SOCKETS
from tests.reliability.conftest import use_servers
from tests.support import batches, graphs
from tests.support.faults import renders, running_batch, wait_for

pytestmark = [pytest.mark.anyio, pytest.mark.kills_servers, PREFECT_SOCKETS]

IMAGES = 200
DELAY_S = 0.1


def _names(servers: Sequence[LocalComfyServer]) -> list[str]:
    return [name_from_url(server.url) for server in servers]


def _manifest(settings: Settings, batch: str) -> pd.DataFrame:
    manifest = read_manifest(OutputStore(settings.output_root), batch)
    assert manifest is not None
    return manifest


def _stored_on(manifest: pd.DataFrame) -> dict[str, str]:
    """`{nonce: server}` of every stored image."""
    done = manifest[manifest["status"] == "done"]
    return dict(zip(done["param.nonce"], done["server"], strict=True))


async def test_orchestrator_killed_mid_batch_rerun_regenerates_nothing(
    servers: list[LocalComfyServer], own_prefect: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGKILL of the flow's process mid-batch, then a rerun: 200 of 200 stored, every image rendered exactly once."""
    settings = use_servers(monkeypatch, tmp_path, [server.url for server in servers])
    nonces = batches.nonces("orch", IMAGES)
    workflow = tmp_path / "delay.json"
    workflow.write_text(json.dumps(batches.through_graph("ComfybatchDelay", seconds=DELAY_S)))
    sheet = tmp_path / "nonces.csv"
    sheet.write_text("nonce\n" + "\n".join(nonces) + "\n")
    out = Path(settings.output_root)
    command = [sys.executable, "-m", "comfybatch.cli", "run", "--workflow", str(workflow), "--sheet", str(sheet),
               "--bind", "nonce=2.inputs.nonce", "--name", "orch-kill", "--out", str(out),
               *(arg for server in servers for arg in ("--server", server.url))]  # fmt: skip
    with (tmp_path / "orchestrator.log").open("wb") as log:
        child = subprocess.Popen(command, env={**os.environ, "PREFECT_API_URL": own_prefect.api_url},  # noqa: ASYNC220
                                 stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        await wait_for(lambda: batches.finished_records(out / "orch-kill") >= IMAGES // 4, timeout_s=180)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    stored_before = batches.finished_records(out / "orch-kill")
    spec = BatchSpec(name="orch-kill", workflow=str(workflow), sheet=str(sheet), bindings={"nonce": "2.inputs.nonce"},
                     output=str(out), servers=_names(servers))  # fmt: skip

    report = await generate_batch(spec)

    where = renders(servers)
    assert stored_before < IMAGES, "the orchestrator was killed after the batch ended"
    assert (report.done + report.skipped, report.failed) == (IMAGES, 0)
    assert report.skipped == stored_before
    assert [len(where.get(nonce, [])) for nonce in nonces] == [1] * IMAGES


async def test_prefect_restart_mid_batch_completes_and_leaks_no_slot(
    servers: list[LocalComfyServer], prefect_server: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Prefect's server stopped mid-batch and started again (same database, port): all stored once, no slot taken.

    It stays down until every image is rendered, so the batch's tail (progress writes, slots given back)
    meets the outage, and the leases held across it must survive the restart.
    """
    fleet = servers[:2]
    settings = use_servers(monkeypatch, tmp_path, [server.url for server in fleet])
    spec = batches.delay_spec("prefect-restart", seconds=DELAY_S, count=IMAGES, servers=_names(fleet))
    batch_dir = Path(settings.output_root) / "prefect-restart"

    async with running_batch(spec) as running:
        await wait_for(lambda: batches.finished_records(batch_dir) >= IMAGES // 2, timeout_s=120)
        stored_at_stop = batches.finished_records(batch_dir)
        await asyncio.to_thread(prefect_server.stop)
        await wait_for(lambda: running.done() or batches.finished_records(batch_dir) == IMAGES, timeout_s=120)
        prefect_server.spawn()  # here, not in a worker thread: the server dies with the thread that spawned it
        await asyncio.to_thread(prefect_server.wait_ready)
        report = await running

    where = renders(fleet)
    assert stored_at_stop < IMAGES, "the batch had rendered everything before Prefect went down"
    assert (report.done, report.failed) == (IMAGES, 0)
    assert [len(where.get(nonce, [])) for nonce in batches.spec_nonces(spec)] == [1] * IMAGES
    assert await _active_slots(_names(fleet)) == dict.fromkeys(_names(fleet), 0)


async def _active_slots(names: list[str]) -> dict[str, int]:
    """Taken slots of each server's `comfy:<name>` global concurrency limit, as Prefect's API reports them."""
    wanted = {limit_name(name): name for name in names}
    async with get_client() as client:
        limits = await client.read_global_concurrency_limits(limit=200)
    return {wanted[limit.name]: limit.active_slots for limit in limits if limit.name in wanted}


async def test_connections_cut_every_2s_every_item_reconciled_once(
    servers: list[LocalComfyServer], prefect_server: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """Loopback proxies cut every connection every 2 s; each 4 s image outlives a cut: all finish via /history, once."""
    caplog.set_level(logging.INFO, logger="comfybatch.comfy.follow")
    backends = servers[:2]
    async with TcpProxy(backends[0].port) as first, TcpProxy(backends[1].port) as second:
        proxies = [first, second]
        settings = use_servers(monkeypatch, tmp_path, [proxy.url for proxy in proxies])
        # Each prompt keeps its socket twice as long as the gap between two cuts: every one is cut at least once.
        spec = batches.delay_spec("cut", seconds=4.0, count=4, servers=[name_from_url(proxy.url) for proxy in proxies])
        cutter = asyncio.create_task(_cut_every(proxies, period_s=2.0))
        try:
            report = await generate_batch(spec)
        finally:
            cutter.cancel()
            await asyncio.wait([cutter])

    manifest = _manifest(settings, "cut")
    reconciled = {getattr(record, "prompt_id", None) for record in caplog.records}
    where = renders(backends)
    assert (report.done, report.failed) == (4, 0)
    assert min(proxy.cuts for proxy in proxies) >= 2
    assert set(manifest["prompt_id"]) <= reconciled
    assert [len(where.get(nonce, [])) for nonce in batches.spec_nonces(spec)] == [1] * 4


async def _cut_every(proxies: list[TcpProxy], *, period_s: float) -> None:
    while True:
        await asyncio.sleep(period_s)
        for proxy in proxies:
            proxy.cut()


async def test_hung_server_is_caught_by_the_idle_timeout_and_its_items_fail_over(
    servers: list[LocalComfyServer], prefect_server: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """One of two servers hangs silently in every prompt: a 1 s idle timeout moves its items to the other, once each."""
    hung, healthy = servers[1], servers[2]
    settings = use_servers(monkeypatch, tmp_path, [hung.url, healthy.url], idle_timeout_s="1.0")
    graph = batches.through_graph("ComfybatchHang", seconds=3.0, report_progress=False, only_on_port=hung.port)
    spec = batches.node_spec("hang", graph, count=6, servers=_names([hung, healthy]))

    report = await generate_batch(spec)

    manifest = _manifest(settings, "hang")
    failovers = [record.getMessage() for record in caplog.records if "trying another server" in record.getMessage()]
    where = renders([healthy])
    assert (report.done, report.failed) == (6, 0)
    assert set(manifest["server"]) == {name_from_url(healthy.url)}
    assert failovers
    assert all(f"failed on {name_from_url(hung.url)} (timed out)" in line for line in failovers)
    assert [len(where.get(nonce, [])) for nonce in batches.spec_nonces(spec)] == [1] * 6


class _LoseOneAnswer(httpx.AsyncBaseTransport):
    """Lets the request reach the real server, then breaks the connection before its answer: once, for `path`."""

    def __init__(self, method: str, path: str) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._target = (method, path)
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if not self.lost and (request.method, request.url.path) == self._target:
            self.lost += 1
            await response.aclose()
            raise httpx.ReadError("connection reset before the answer", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_lost_answer_to_the_submission_is_followed_not_resubmitted(
    servers: list[LocalComfyServer], tmp_path: Path
) -> None:
    """`POST /prompt` reached the server but its answer was lost: the prompt is found and followed, and ran once."""
    server, transport = servers[0], _LoseOneAnswer("POST", "/prompt")
    graph = graphs.delay(DELAY_S, graphs.unique("lost-post"))
    async with ComfyClient(server.url, transport=transport) as comfy:
        result = await comfy.run(load_workflow(graph))
        saved = await comfy.download(result.outputs[0], tmp_path / "out.png")

    assert transport.lost == 1
    assert result.reconnects == 1
    assert saved.size_bytes > 0
    assert batches.executions(server).get(graphs.nonce_of(graph)) == 1


async def test_download_cut_once_is_fetched_again(servers: list[LocalComfyServer], tmp_path: Path) -> None:
    """A `GET /view` whose connection breaks is retried: the image arrives instead of the job being rendered again."""
    server, transport = servers[0], _LoseOneAnswer("GET", "/view")
    async with ComfyClient(server.url, transport=transport) as comfy:
        result = await comfy.run(load_workflow(graphs.delay(DELAY_S, graphs.unique("lost-view"))))
        saved = await comfy.download(result.outputs[0], tmp_path / "out.png")

    assert transport.lost == 1
    assert saved.path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


async def test_server_killed_mid_batch_reroutes_and_renders_nothing_twice(
    servers: list[LocalComfyServer], prefect_server: LocalPrefectServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """SIGKILL of one of four servers mid-batch: 200 of 200 stored once, none rendered twice, its queue rerouted."""
    victim, survivors = servers[3], servers[:3]
    settings = use_servers(monkeypatch, tmp_path, [server.url for server in servers])
    spec = batches.delay_spec("kill-server", seconds=DELAY_S, count=IMAGES, servers=_names(servers))
    batch_dir = Path(settings.output_root) / "kill-server"

    async with running_batch(spec) as running:
        await wait_for(lambda: batches.finished_records(batch_dir) >= IMAGES // 5, timeout_s=120)
        queued = await _kill_while_prompts_wait(victim)
        report = await running

    manifest = _manifest(settings, "kill-server")
    stored_on = _stored_on(manifest)
    dead = name_from_url(victim.url)
    on_victim = {nonce for nonce in batches.executions(victim) if nonce in stored_on}
    stranded = [nonce for nonce in queued if nonce not in on_victim]  # still waiting when it died
    lost_renders = on_victim - {nonce for nonce, server in stored_on.items() if server == dead}
    where = renders(survivors)
    assert (report.done, report.failed) == (IMAGES, 0)
    assert manifest["key"].is_unique
    assert all(len(files) == 1 for files in manifest["outputs"])
    # Each image stored from a survivor ran there once and nowhere else alive; those stored from the victim, nowhere.
    assert {nonce: where.get(nonce, []) for nonce in stored_on} == {
        nonce: [] if server == dead else [server] for nonce, server in stored_on.items()
    }
    assert dead in stored_on.values()
    assert stranded
    assert all(stored_on[nonce] != dead for nonce in stranded)
    assert len(lost_renders) <= settings.default_slots  # rendered, died before the download: at most its slots


async def _kill_while_prompts_wait(server: LocalComfyServer) -> list[str]:
    """SIGKILL `server` as soon as a prompt waits in its queue; the nonces that were waiting."""
    async with httpx.AsyncClient(base_url=server.url, timeout=5.0) as http, asyncio.timeout(60):
        while True:
            pending = (await http.get("/queue")).json()["queue_pending"]
            if pending:
                server.kill()
                return [str(row[2]["2"]["inputs"]["nonce"]) for row in pending]
            await asyncio.sleep(0.01)
