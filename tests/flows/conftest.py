"""A real Prefect server for the session, and per-test comfybatch settings pointing at the test fleet."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks.server import name_from_url
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings, get_settings
from tests.conftest import SuiteFleet

# Prefect caches API clients per event loop; when a test's loop ends, their sockets are collected
# unclosed. Those are Prefect's, to the Prefect server only; our own clients are checked elsewhere.
PREFECT_SOCKETS = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <socket.socket:pytest.PytestUnraisableExceptionWarning"
)


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`prefect server start` on loopback with its own SQLite home; the whole suite shares it."""
    server = LocalPrefectServer(tmp_path_factory.mktemp("prefect"))
    server.start()
    try:
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
            APILogWorker.drain_all(timeout=10)  # send buffered run logs before the server goes
    finally:
        server.stop()


@pytest.fixture
def batch_settings(
    prefect_api: str, comfy_fleet: SuiteFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Settings]:
    """Settings for one test: the shared servers as the fleet, outputs under tmp_path, quick retries."""
    yield use_test_settings(monkeypatch, comfy_fleet, tmp_path)
    get_settings.cache_clear()


def use_test_settings(monkeypatch: pytest.MonkeyPatch, fleet: SuiteFleet, tmp_path: Path) -> Settings:
    """Point this process's comfybatch settings at the test fleet, with outputs under `tmp_path`."""
    monkeypatch.setenv("COMFYUI_URLS", ",".join(server.url for server in fleet.servers))
    monkeypatch.setenv("COMFYBATCH_OUTPUT_ROOT", str(tmp_path / "out"))
    monkeypatch.setenv("COMFYBATCH_CONFIG_FILE", str(tmp_path / "absent.toml"))
    monkeypatch.setenv("COMFYBATCH_RETRY_BACKOFF_S", "0.2")
    get_settings.cache_clear()
    return get_settings()


def server_names(fleet: SuiteFleet) -> list[str]:
    return [name_from_url(server.url) for server in fleet.servers]
