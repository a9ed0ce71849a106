"""The fault suite's own processes: four ComfyUI servers it may kill, hang and cut, and throwaway Prefect servers."""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings, get_settings
from comfybatch.testing.fleet import HarnessFleet
from tests.conftest import FleetServer, SuiteFleet
from tests.flows.conftest import use_test_settings
from tests.support.faults import prefect_api_of


@pytest.fixture(scope="module")
def reliability_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFleet]:
    """Four servers of this module's own, never the session's: its tests kill, hang and cut them."""
    if os.environ.get("COMFYBATCH_TEST_COMFY_URLS"):
        pytest.skip("kills and hangs servers; not with COMFYBATCH_TEST_COMFY_URLS")
    with HarnessFleet(tmp_path_factory.mktemp("reliability"), names=[f"rel-{index}" for index in range(4)]) as fleet:
        yield fleet


@pytest.fixture
def servers(reliability_fleet: LocalFleet) -> list[LocalComfyServer]:
    """The module's servers, each one running (an earlier test may have killed one)."""
    for server in reliability_fleet.servers:
        if server.process is None or server.process.poll() is not None:
            server.restart()
    return reliability_fleet.servers


@pytest.fixture(scope="module")
def reliability_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """This module's Prefect server, made current: its tests stop and start it."""
    with _current(LocalPrefectServer(tmp_path_factory.mktemp("reliability-prefect"))) as server:
        yield server


@pytest.fixture
def prefect_server(reliability_prefect: LocalPrefectServer) -> LocalPrefectServer:
    """The module's Prefect server, running (an earlier test may have stopped it and failed)."""
    if reliability_prefect.process is None or reliability_prefect.process.poll() is not None:
        reliability_prefect.start()
    return reliability_prefect


@pytest.fixture
def own_prefect(prefect_server: LocalPrefectServer, tmp_path: Path) -> Iterator[LocalPrefectServer]:
    """A Prefect server for this test alone, made current: for a test that leaves slots taken until they expire."""
    with _current(LocalPrefectServer(tmp_path / "prefect")) as server:
        yield server


@contextlib.contextmanager
def _current(server: LocalPrefectServer) -> Iterator[LocalPrefectServer]:
    server.start()
    try:
        with prefect_api_of(server.api_url):
            yield server
    finally:
        server.stop()


def use_servers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, urls: list[str], **settings: str) -> Settings:
    """comfybatch settings for one test: `urls` as the fleet, outputs under `tmp_path`, extra `COMFYBATCH_*`."""
    for name, value in settings.items():
        monkeypatch.setenv(f"COMFYBATCH_{name.upper()}", value)
    fleet = SuiteFleet([FleetServer(url, url) for url in urls], None)
    return use_test_settings(monkeypatch, fleet, tmp_path)


@pytest.fixture(autouse=True)
def _fresh_settings() -> Iterator[None]:
    yield
    get_settings.cache_clear()
