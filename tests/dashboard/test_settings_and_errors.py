"""Dashboard settings parsing and the error boundary (no Prefect needed: the launcher seam raises)."""

import logging
from uuid import UUID

import httpx
import pytest
from pydantic import ValidationError

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.errors import ConfigError
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH, tiny_spec

SECRET = "s3cr3t-token-in-an-exception"


class BrokenLauncher(Launcher):
    """A launcher whose Prefect side fails: unexpectedly for `get`, with our error for `start`."""

    async def get(self, flow_run_id: UUID) -> object:  # type: ignore[override]
        raise RuntimeError(f"database password {SECRET}")

    async def start(self, spec: BatchSpec, idempotency_key: str | None, submitted_by: str) -> object:  # type: ignore[override]
        raise ConfigError("deployment 'generate-batch/generate-batch' is not served")


def _client(settings: Settings) -> httpx.AsyncClient:
    app = create_app(settings, BrokenLauncher(settings, api_url="http://127.0.0.1:9/api"))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://x")


def test_api_keys_parse_from_name_key_pairs(monkeypatch: pytest.MonkeyPatch) -> None:
    """`COMFYBATCH_API_KEYS=name:key,name2:key2` becomes a name → key mapping; origins split on commas."""
    monkeypatch.setenv("COMFYBATCH_API_KEYS", "ci:abc123, ops:def:456")
    monkeypatch.setenv("COMFYBATCH_CORS_ORIGINS", "https://a.example/, https://b.example")

    settings = Settings()

    assert settings.api_keys == {"ci": "abc123", "ops": "def:456"}
    assert settings.cors_origins == ["https://a.example", "https://b.example"]


def test_malformed_api_keys_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key without a name is a settings error that names the expected `name:key` format."""
    monkeypatch.setenv("COMFYBATCH_API_KEYS", "justakeynoname")

    with pytest.raises(ValidationError) as caught:
        Settings()

    assert "expected `name:key` pairs" in str(caught.value)


def test_disabled_auth_is_logged_loudly(caplog: pytest.LogCaptureFixture) -> None:
    """Building the app with `api_auth_disabled` logs a WARNING."""
    with caplog.at_level(logging.WARNING, logger="comfybatch.dashboard.app"):
        create_app(Settings(api_auth_disabled=True))

    assert any(record.levelno == logging.WARNING and "DISABLED" in record.message for record in caplog.records)


@pytest.mark.anyio
async def test_unexpected_error_is_500_without_details() -> None:
    """An exception we did not expect answers 500 `internal error`, never its message."""
    async with _client(Settings(api_keys={"ci": API_KEY})) as http:
        response = await http.get("/api/batches/00000000-0000-0000-0000-000000000001", headers=AUTH)

    assert (response.status_code, response.json()) == (500, {"detail": "internal error"})
    assert SECRET not in response.text


@pytest.mark.anyio
async def test_our_errors_are_400_with_their_message() -> None:
    """A `ComfyBatchError` from the launcher answers 400 with its message."""
    async with _client(Settings(api_keys={"ci": API_KEY})) as http:
        response = await http.post("/api/batches", json=tiny_spec("dash-x", "a cat"), headers=AUTH)

    assert response.status_code == 400
    assert "is not served" in response.json()["detail"]


@pytest.mark.anyio
async def test_disabled_auth_lets_requests_without_key_through() -> None:
    """With the explicit opt-out an `/api` route needs no key."""
    async with _client(Settings(api_auth_disabled=True)) as http:
        response = await http.get("/api/workflows")

    assert response.status_code == 200


@pytest.mark.anyio
async def test_prefect_unreachable_is_503_with_retry_after() -> None:
    """With nothing listening at the Prefect API, listing batches answers 503 + Retry-After (an outage to retry),
    not 500."""
    settings = Settings(api_keys={"ci": API_KEY})
    app = create_app(settings, Launcher(settings, api_url="http://127.0.0.1:9/api"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://x") as http:
        response = await http.get("/api/batches", headers=AUTH)

    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert "Prefect API" in response.json()["detail"]
