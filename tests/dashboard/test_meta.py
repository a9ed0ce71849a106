"""`GET /api/servers` and `GET /metrics` on a real Prefect server, `comfybatch serve` and the suite's fleet."""

import re
from pathlib import Path

import httpx
import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from tests.dashboard.conftest import AUTH, DashboardPlatform

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)\{(?P<labels>[^{}]*)\} (?P<value>\S+)$")
TOKEN = "proxy-token-must-not-leak-0123456789"


def fleet_names(platform: DashboardPlatform) -> set[str]:
    return {name_from_url(server.url) for server in platform.fleet.servers}


async def test_servers_lists_the_fleet_as_ok(client: httpx.AsyncClient, dashboard_platform: DashboardPlatform) -> None:
    """Every server of the session fleet is listed as ok with its slots and a queue depth."""
    response = await client.get("/api/servers", headers=AUTH)

    assert response.status_code == 200, response.text
    servers = {server["name"]: server for server in response.json()["servers"]}
    assert fleet_names(dashboard_platform) <= set(servers)
    for name in fleet_names(dashboard_platform):
        assert (servers[name]["health"], servers[name]["reason"]) == ("ok", None)
        assert servers[name]["slots"] >= 1
        assert servers[name]["queue_depth"] >= 0
        assert servers[name]["in_flight"] >= 0


async def test_servers_requires_the_key(client: httpx.AsyncClient) -> None:
    """`/api/servers` answers 401 without an API key."""
    response = await client.get("/api/servers")

    assert response.status_code == 401


async def test_servers_never_show_a_token(
    dashboard_platform: DashboardPlatform, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A configured server with an API token is listed, and neither `/api/servers` nor `/metrics` shows the token."""
    url = dashboard_platform.fleet.servers[0].url
    config = tmp_path / "comfybatch.toml"
    config.write_text(f'[[servers]]\nname = "tokened"\nurl = "{url}"\napi_token_env = "TEST_COMFY_TOKEN"\n')
    monkeypatch.setenv("TEST_COMFY_TOKEN", TOKEN)
    monkeypatch.setenv("COMFYBATCH_CONFIG_FILE", str(config))
    settings = dashboard_platform.settings()
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        servers = await http.get("/api/servers", headers=AUTH)
        metrics = await http.get("/metrics")

    assert servers.status_code == 200, servers.text
    assert "tokened" in {server["name"] for server in servers.json()["servers"]}
    assert TOKEN not in servers.text
    assert TOKEN not in metrics.text


async def test_metrics_is_prometheus_text_with_a_line_per_server(
    client: httpx.AsyncClient, dashboard_platform: DashboardPlatform
) -> None:
    """`/metrics` needs no key, every sample is `name{labels} value` with a float, and each server has an up line."""
    response = await client.get("/metrics")

    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = [line for line in response.text.splitlines() if line and not line.startswith("#")]
    assert samples
    for line in samples:
        match = SAMPLE.match(line)
        assert match, line
        float(match["value"])
    up = {line for line in samples if line.startswith("comfybatch_server_up{")}
    assert {f'comfybatch_server_up{{server="{name}"}} 1.0' for name in fleet_names(dashboard_platform)} <= up


async def test_metrics_has_histograms_with_buckets_and_api_latency_per_route(client: httpx.AsyncClient) -> None:
    """Prompt, batch and API seconds are histograms with buckets; each request is timed under its route template."""
    assert (await client.get("/api/workflows", headers=AUTH)).status_code == 200
    assert (await client.get("/api/batches/00000000-0000-0000-0000-000000000000", headers=AUTH)).status_code == 404

    text = (await client.get("/metrics")).text

    for name in ("comfybatch_prompt_seconds", "comfybatch_batch_seconds", "comfybatch_api_request_seconds"):
        assert f"# TYPE {name} histogram" in text
    assert 'comfybatch_api_request_seconds_bucket{le="+Inf",method="GET",route="/api/workflows"} 1.0' in text
    assert 'comfybatch_api_request_seconds_count{method="GET",route="/api/batches/{batch_id}"} 1.0' in text
    assert 'comfybatch_api_request_seconds_bucket{le="0.05",method="GET",route="/api/workflows"}' in text
