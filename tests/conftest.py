"""Session-wide fixtures: real ComfyUI servers (started once), anyio on asyncio, fast retries."""

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import stamina

from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.testing.fleet import HarnessFleet

FIXTURES = Path(__file__).parent / "fixtures"
TESTS = Path(__file__).parent
# The fast loop, `pytest -m "not slow"`: the unit tests and these smoke tests on real ComfyUI and Prefect.
SMOKE = {
    "comfy/test_txt2img.py::test_txt2img_same_seed_gives_same_pixels_on_two_servers",
    "comfy/test_session.py::test_two_prompts_share_one_socket_and_each_gets_only_its_own_events",
    "flows/test_batch.py::test_batch_from_csv_sheet_renders_every_row",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers from what a test uses: `comfy` (the suite's ComfyUI servers), `browser` (Chromium) and `slow`
    (anything beyond the unit tests and the smoke tests). CI runs them all."""
    for item in items:
        relative = item.path.relative_to(TESTS).as_posix()
        if "comfy_fleet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.comfy)
        if relative.startswith("browser/"):
            item.add_marker(pytest.mark.browser)
        if not relative.startswith("unit/") and f"{relative}::{item.name}" not in SMOKE:
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class FleetServer:
    """A ComfyUI server the suite may use; `local` is set when this run started it."""

    name: str
    url: str
    local: LocalComfyServer | None = None

    @property
    def output_dir(self) -> Path:
        if self.local is None:
            pytest.skip("needs the server's output folder (not available for external servers)")
        return self.local.output_dir


@dataclass(frozen=True)
class SuiteFleet:
    servers: list[FleetServer]
    local: LocalFleet | None

    def add_victim(self, name: str) -> LocalComfyServer:
        """A dedicated server a test may kill; the caller stops it."""
        if self.local is None:
            pytest.skip("kills servers; not with COMFYBATCH_TEST_COMFY_URLS")
        return self.local.add_server(name)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session", autouse=True)
def _fast_retries() -> Iterator[None]:
    # Keep the client's retry attempts, without the back-off sleeps.
    stamina.set_testing(True, attempts=3)
    yield
    stamina.set_testing(False)


@pytest.fixture(scope="session")
def comfy_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SuiteFleet]:
    """Two real ComfyUI servers with the test nodes and the tiny checkpoint, shared by the suite.

    `COMFYBATCH_TEST_COMFY_URLS` (comma-separated) uses running servers instead.
    """
    if urls := os.environ.get("COMFYBATCH_TEST_COMFY_URLS"):
        servers = [FleetServer(f"ext-{i}", url.strip().rstrip("/")) for i, url in enumerate(urls.split(",")) if url]
        yield SuiteFleet(servers, None)
        return
    with HarnessFleet(tmp_path_factory.mktemp("comfy"), count=2) as fleet:
        yield SuiteFleet([FleetServer(s.name, s.url, s) for s in fleet.servers], fleet)


@pytest.fixture
def comfy_server(comfy_fleet: SuiteFleet) -> FleetServer:
    """The first shared server."""
    return comfy_fleet.servers[0]


@pytest.fixture
def victim(comfy_fleet: SuiteFleet, request: pytest.FixtureRequest) -> Iterator[LocalComfyServer]:
    """A fresh server of its own for tests that crash or kill it."""
    server = comfy_fleet.add_victim("victim-" + re.sub(r"[^a-z0-9]+", "-", request.node.name.lower())[:40])
    yield server
    server.stop()
