"""Issue 12 §1: reads answer from the stored plan, the journal and Prefect's run state, and write nothing to Prefect."""

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import UUID

import anyio
import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import State
from prefect.states import AwaitingRetry, Cancelled, Cancelling, Completed, Failed, Running, Scheduled

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import _POLL_TTL_S, CANCELLED_BY, GENERATE_BATCH, Launcher
from comfybatch.settings import Settings
from tests.dashboard.conftest import (
    API_KEY,
    AUTH,
    DashboardPlatform,
    RenderedBatches,
    retried_in_place,
    tiny_spec,
    wait_finished,
)

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



@dataclass
class EndedBatch:
    """A batch that ended, its status read through a served dashboard (shared reads, settled answers kept)."""

    http: httpx.AsyncClient
    prefect: PrefectClient
    run_id: UUID
    ended: dict[str, Any]

    async def read_after(self, *states: State[Any]) -> dict[str, Any]:
        """Set the run's states in turn as Prefect's Retry, a runner or an automation would, and read the status once
        a read shared before has expired."""
        for state in states:
            await self.prefect.set_flow_run_state(self.run_id, state, force=True)
        await anyio.sleep(_POLL_TTL_S + 0.5)
        status: dict[str, Any] = (await self.http.get(f"/api/batches/{self.run_id}", headers=AUTH)).json()
        return status


@asynccontextmanager
async def ended_batch(platform: DashboardPlatform, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[EndedBatch]:
    from comfybatch.dashboard.routes import batches

    monkeypatch.setattr(batches, "_SETTLE_AFTER", timedelta(0))  # an ended status is kept from its first read
    settings = platform.settings()
    app = create_app(settings, Launcher(settings, api_url=platform.api_url))
    async with (
        app.router.lifespan_context(app),  # as served: reads are shared between requests
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard", timeout=60) as http,
        PrefectClient(platform.api_url) as prefect,
    ):
        spec = tiny_spec(f"dash-again-{uuid.uuid4().hex[:6]}", "a kite")
        created = await http.post("/api/batches", json=spec, headers=AUTH)
        assert created.status_code == 202, created.text
        await wait_finished(http, created.json()["batch_id"])
        run_id = UUID(created.json()["batch_id"])
        ended = (await http.get(f"/api/batches/{run_id}", headers=AUTH)).json()  # read, shared and kept
        try:
            yield EndedBatch(http, prefect, run_id, ended)
        finally:
            await prefect.set_flow_run_state(run_id, Completed(), force=True)  # as it ended


def _not_due() -> State[Any]:
    """Scheduled again in place, as Prefect's Retry does, but not due for a day: no runner takes it in the test."""
    return AwaitingRetry(scheduled_time=datetime.now(UTC) + timedelta(days=1))


async def test_an_ended_batch_run_again_in_place_shows_its_new_state(
    dashboard_platform: DashboardPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ended batch whose run is scheduled again in place (Prefect's Retry; the rerun automation of a crashed
    batch) shows its new state a moment later, though its ended status was read, shared and kept before."""
    async with ended_batch(dashboard_platform, monkeypatch) as batch:
        again = await batch.read_after(_not_due())

    assert batch.ended["state"] == "COMPLETED"
    assert (again["state"], again["state_name"]) == ("SCHEDULED", "AwaitingRetry")


async def test_an_ended_batch_that_ends_again_in_place_shows_its_new_ending(
    dashboard_platform: DashboardPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ended batch run again in place that ends again answers with its new ending, not the status kept from its
    first one."""
    async with ended_batch(dashboard_platform, monkeypatch) as batch:
        await batch.read_after(_not_due())
        ended_again = await batch.read_after(Failed(message="the second execution failed"))

    assert batch.ended["state"] == "COMPLETED"
    assert (ended_again["state"], ended_again["reason"]) == ("FAILED", "the second execution failed")


async def test_a_batch_cancelled_again_after_running_again_in_place_names_who_cancelled_it_last(
    dashboard_platform: DashboardPlatform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why a cancelled batch ended names who asked (read from the run's history, as the runner's Cancelled state has
    its own words); run again in place and cancelled again, it names the second one."""
    async with ended_batch(dashboard_platform, monkeypatch) as batch:
        first = await batch.read_after(Cancelling(message=f"{CANCELLED_BY}alice"), Cancelled(message="stopped"))
        await batch.read_after(_not_due())
        # Running again: Prefect cancels a run that has not started at once, without the request's words.
        second = await batch.read_after(Running(), Cancelling(message=f"{CANCELLED_BY}bob"),
                                        Cancelled(message="stopped"))  # fmt: skip

    assert (first["state"], first["reason"]) == ("CANCELLED", f"{CANCELLED_BY}alice")
    assert (second["state"], second["reason"]) == ("CANCELLED", f"{CANCELLED_BY}bob")


async def test_a_failed_batch_retried_in_place_shows_the_item_its_retry_rendered(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """A failed batch retried in place (Prefect's Retry: the same run scheduled again) renders its failed item: its
    status says so, although the item's failed record was read, and kept as finished, when the run first ended."""
    first, again = await retried_in_place(client, dashboard_platform, tmp_path)

    assert (first["state"], first["counts"]["done"], first["counts"]["failed"]) == ("FAILED", 1, 1)
    assert (again["state"], again["counts"]["done"], again["counts"]["failed"]) == ("COMPLETED", 2, 0)
