"""Issue 12 §1: reads answer from the stored plan, the journal and Prefect's run state, and write nothing to Prefect."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import State
from prefect.states import Scheduled

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH, DashboardPlatform, RenderedBatches, tiny_spec

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]
_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.[01]\r\n")
_READ_ONLY_POSTS = ("/filter", "/count", "/paginate")


class PrefectTap:
    """A TCP relay in front of the Prefect server: every HTTP request line that reaches the server, as sent."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self._host, self._port, self._path = parts.hostname or "127.0.0.1", parts.port or 80, parts.path
        self._streams: list[bytearray] = []
        self.api_url = ""

    def requests(self) -> list[tuple[str, str]]:
        return [(m[1].decode(), m[2].decode()) for data in self._streams for m in _REQUEST_LINE.finditer(data)]

    def writes(self) -> list[tuple[str, str]]:
        """Requests that may change Prefect's state: any method but GET, except the read-only query POSTs."""
        return [(method, path) for method, path in self.requests()
                if method != "GET" and not path.split("?")[0].endswith(_READ_ONLY_POSTS)]  # fmt: skip

    @asynccontextmanager
    async def running(self) -> AsyncIterator["PrefectTap"]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.api_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}{self._path}"
        try:
            yield self
        finally:
            server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        seen = bytearray()
        self._streams.append(seen)
        await asyncio.gather(self._pipe(reader, up_writer, seen), self._pipe(up_reader, writer, None))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: bytearray | None) -> None:
        try:
            while chunk := await reader.read(65536):
                if seen is not None:
                    seen += chunk
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()


async def test_a_thousand_reads_of_a_finished_batch_write_nothing_to_prefect(
    dashboard_platform: DashboardPlatform, rendered: RenderedBatches
) -> None:
    """1,000 mixed GETs (status, items, list, manifest, servers) of a finished batch send Prefect 0 write requests,
    with the fleet configured in the dashboard's settings (what a fleet sync would write), and the batch reads never
    load the fleet's blocks or limits."""
    batch_id = rendered.first["batch_id"]
    paths = [f"/api/batches/{batch_id}", f"/api/batches/{batch_id}/items", "/api/batches",
             f"/api/batches/{batch_id}/manifest", "/api/servers"]  # fmt: skip
    urls = [server.url for server in dashboard_platform.fleet.servers]
    settings = Settings(**{"COMFYUI_URLS": ",".join(urls), "output_root": str(dashboard_platform.out),  # type: ignore[arg-type]
                           "api_keys": {"ci": API_KEY}})  # fmt: skip
    async with PrefectTap(dashboard_platform.api_url).running() as tap:
        app = create_app(settings, Launcher(settings, api_url=tap.api_url))
        transport = httpx.ASGITransport(app=app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://dashboard", timeout=60) as http,
        ):
            statuses: list[int] = []

            async def read(number: int) -> None:
                statuses.append((await http.get(paths[number % len(paths)], headers=AUTH)).status_code)

            for number in range(20):  # the batch's own reads first: the fleet is not even read
                await read(number % 4)
            fleet_reads = [path for _, path in tap.requests() if "block" in path or "concurrency" in path]
            for start in range(0, 1000, 25):
                async with anyio.create_task_group() as group:
                    for number in range(start, start + 25):
                        group.start_soon(read, number)
            status = (await http.get(f"/api/batches/{batch_id}", headers=AUTH)).json()

    assert statuses.count(200) == 1020, sorted(set(statuses))
    assert tap.requests(), "the reads never reached Prefect through the tap"
    assert tap.writes() == []
    assert fleet_reads == []
    assert (status["planned"], status["counts"]["total"], status["counts"]["done"]) == (True, 2, 2)


async def test_a_batch_before_its_plan_answers_from_the_request(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform
) -> None:
    """A batch whose flow has not stored its plan says `planned: false`, total = prompts x images, pending all."""
    spec = {**tiny_spec(f"dash-unplanned-{uuid.uuid4().hex[:8]}", "a red fox", "a blue jay", "an owl"),
            "images_per_item": 2}  # fmt: skip
    later: State[Any] = Scheduled(scheduled_time=datetime.now(UTC) + timedelta(days=1))
    async with PrefectClient(dashboard_platform.api_url) as prefect:
        deployment = await prefect.read_deployment_by_name(GENERATE_BATCH)
        run = await prefect.create_flow_run_from_deployment(
            deployment.id, parameters={"spec": spec}, name=spec["name"], state=later
        )
        try:
            status = await client.get(f"/api/batches/{run.id}", headers=AUTH)
            items = await client.get(f"/api/batches/{run.id}/items", headers=AUTH)
        finally:
            await prefect.delete_flow_run(run.id)

    assert status.status_code == 200, status.text
    body = status.json()
    assert (body["planned"], body["counts"]["total"], body["counts"]["pending"], body["eta_s"]) == (False, 6, 6, None)
    assert (items.json()["planned"], items.json()["total"]) == (False, 0)


async def test_a_settled_batch_status_is_answered_without_reading_its_record_again(
    client: httpx.AsyncClient, rendered: RenderedBatches, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a run has ended and its hooks are done (here: at once), its status is kept: the second read of the
    batch opens no journal file, and answers the same."""
    from comfybatch.dashboard.routes import batches
    from comfybatch.records import JobJournal

    monkeypatch.setattr(batches, "_SETTLE_AFTER", timedelta(0))
    loads: list[str] = []
    real_load = JobJournal.load

    async def counted(journal: JobJournal, *args: Any, **kwargs: Any) -> Any:
        loads.append(journal.folder)
        return await real_load(journal, *args, **kwargs)

    monkeypatch.setattr(JobJournal, "load", counted)
    url = f"/api/batches/{rendered.first['batch_id']}"

    first = await client.get(url, headers=AUTH)
    read_before = len(loads)
    second = await client.get(url, headers=AUTH)

    assert first.status_code == second.status_code == 200
    assert read_before >= 1
    assert len(loads) == read_before
    assert second.json() == first.json()
