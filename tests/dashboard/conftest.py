"""The dashboard against a real platform: `prefect server start`, `comfybatch serve` and the suite's ComfyUI fleet."""

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.events.filters import EventAnyResourceFilter, EventFilter, EventOccurredFilter
from prefect.states import AwaitingRetry

from comfybatch.blocks.server import name_from_url
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings
from comfybatch.testing.live_app import serve_in_thread
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, ServeProcess, platform_prefect, serve_env, serving
from tests.support.graphs import delay, through, unique

__all__ = ["platform_prefect"]

API_KEY = "test-key-0123456789abcdef"
ALLOWED_ORIGIN = "https://allowed.example"
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@dataclass(frozen=True)
class DashboardPlatform:
    """A served generate-batch deployment rendering into `out`, and the settings the dashboard uses."""

    api_url: str
    out: Path
    serve: ServeProcess
    fleet: SuiteFleet

    def settings(self) -> Settings:
        return Settings(output_root=str(self.out), api_keys={"ci": API_KEY}, cors_origins=[ALLOWED_ORIGIN])

    def client(self) -> httpx.AsyncClient:
        app = create_app(self.settings(), Launcher(self.settings(), api_url=self.api_url))
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard")


@pytest.fixture(scope="module")
def dashboard_platform(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardPlatform]:
    """`comfybatch serve` against this module's Prefect server, outputs under a temporary root."""
    root = tmp_path_factory.mktemp("dashboard-platform")
    env = serve_env(platform_prefect.api_url, comfy_fleet, root)
    with serving(platform_prefect.api_url, env, root, GENERATE_BATCH) as serve:
        yield DashboardPlatform(platform_prefect.api_url, root / "out", serve, comfy_fleet)


@pytest.fixture(scope="module")
def live_dashboard(dashboard_platform: DashboardPlatform) -> Iterator[str]:
    """The dashboard served by uvicorn on loopback (WebSockets, browsers, the SDK): its base URL."""
    settings = dashboard_platform.settings()
    with serve_in_thread(create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))) as url:
        yield url


@pytest.fixture
async def client(dashboard_platform: DashboardPlatform) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the dashboard app (in process, through ASGI)."""
    async with dashboard_platform.client() as http:
        yield http


def tiny_spec(name: str, *prompts: str) -> dict[str, Any]:
    """A batch of the tiny template at one step: seconds on the test fleet."""
    return {"name": name, "workflow": "txt2img-tiny", "prompts": list(prompts), "defaults": {"steps": 1}}



def flaky_spec(name: str, platform: DashboardPlatform, state_dir: Path) -> dict[str, Any]:
    """Two items on one server: the first passes, the second fails all 3 attempts of a run and passes the 4th."""
    graph = through("ComfybatchFlaky", unique(name), key="unused", failures=0, state_dir=str(state_dir))
    return {"name": name, "workflow": graph, "servers": [name_from_url(platform.fleet.servers[0].url)],
            "bindings": {"nonce": "2.inputs.nonce", "failures": "2.inputs.failures", "fkey": "2.inputs.key"},
            "sweep": {"zipped": [{"nonce": [f"{name}-a", f"{name}-b"], "failures": [0, 3],
                                  "fkey": [f"{name}-a", f"{name}-b"]}]}}  # fmt: skip


async def retried_in_place(
    http: httpx.AsyncClient, platform: DashboardPlatform, state_dir: Path,
    between: Callable[[], Awaitable[None]] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """A `flaky_spec` batch that ends FAILED, then is retried in place as Prefect's Retry does (the same run scheduled
    again), which renders the failed item: its status after each ending. `between` runs after the first."""
    name = f"dash-retried-{uuid.uuid4().hex[:6]}"
    created = await http.post("/api/batches", json=flaky_spec(name, platform, state_dir), headers=AUTH)
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]
    first = await wait_finished(http, batch_id)
    if between is not None:
        await between()
    async with PrefectClient(platform.api_url) as prefect:
        await prefect.set_flow_run_state(uuid.UUID(batch_id), AwaitingRetry(scheduled_time=datetime.now(UTC)),
                                         force=True)  # fmt: skip
    return first, await wait_finished(http, batch_id)

async def prefect_history(api_url: str, batch_id: str) -> tuple[list[str], list[str]]:
    """The run's state types and its stored event names, as Prefect's own client reads them."""
    run_id = uuid.UUID(batch_id)
    since = datetime.now(UTC) - timedelta(hours=1)
    event_filter = EventFilter(occurred=EventOccurredFilter(since=since, until=datetime.now(UTC) + timedelta(hours=1)),
                               any_resource=EventAnyResourceFilter(id=[f"prefect.flow-run.{run_id}"]))  # fmt: skip
    async with PrefectClient(api_url) as prefect:
        states = [state.type.value for state in await prefect.read_flow_run_states(run_id)]
        page = await prefect.read_events(event_filter, limit=50)
        events = [event.event for event in page.events]
        while page.next_page is not None:
            page = await prefect.read_events_page(str(page.next_page))
            events += [event.event for event in page.events]
    return states, events


async def wait_stored(api_url: str, batch_id: str, event_name: str, *, timeout_s: float = 30.0) -> None:
    """Wait until Prefect's event store holds the run's `event_name` (its persister writes every few seconds)."""
    deadline = time.monotonic() + timeout_s
    while event_name not in (await prefect_history(api_url, batch_id))[1]:
        if time.monotonic() > deadline:
            pytest.fail(f"{event_name} of {batch_id} not stored within {timeout_s:g} s", pytrace=False)
        await anyio.sleep(0.5)


def slow_spec(name: str, *nonces: str, seconds: float = 4.0) -> dict[str, Any]:
    """One Delay job per nonce: a batch that stays queued or running for a while."""
    return {"name": name, "workflow": delay(seconds, unique(name)), "bindings": {"nonce": "2.inputs.nonce"},
            "sweep": {"axes": {"nonce": list(nonces)}}}  # fmt: skip


async def wait_finished(http: httpx.AsyncClient, batch_id: str, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Poll `GET /api/batches/{id}` until the flow run is in a terminal state."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = await http.get(f"/api/batches/{batch_id}", headers=AUTH)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            pytest.fail(f"batch {batch_id} not finished within {timeout_s:g} s: {body}", pytrace=False)
        await anyio.sleep(0.5)


@dataclass(frozen=True)
class RenderedBatches:
    """Two completed batches: their ids and final status bodies."""

    first: dict[str, Any]
    second: dict[str, Any]


@pytest.fixture(scope="module")
async def rendered(dashboard_platform: DashboardPlatform) -> RenderedBatches:
    """Two tiny batches created through the dashboard and rendered to completion."""
    async with dashboard_platform.client() as http:
        ids = []
        for name, prompts in (("dash-one", ("a red fox", "a blue jay")), ("dash-two", ("a green frog", "a cat"))):
            created = await http.post("/api/batches", json=tiny_spec(name, *prompts), headers=AUTH)
            assert created.status_code == 202, created.text
            ids.append(created.json()["batch_id"])
        first, second = [await wait_finished(http, batch_id) for batch_id in ids]
    return RenderedBatches(first, second)
