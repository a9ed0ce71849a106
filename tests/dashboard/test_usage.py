"""GPU-seconds through the API on a real platform: a batch's status, `/api/usage` per key, `/metrics` per server and
key, and the daily quota's 429."""

import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH, DashboardPlatform, retried_in_place, slow_spec, wait_finished

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(240)]
GPU_SAMPLE = re.compile(r'^comfybatch_gpu_seconds_total\{key="ci",server="(?P<server>[^"]+)"\} (?P<value>\S+)$', re.M)


def _nonces(count: int) -> list[str]:
    """Fresh Delay inputs: a prompt ComfyUI has run before is a cache hit that spends no GPU time."""
    return [uuid.uuid4().hex for _ in range(count)]


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _metrics_gpu_seconds(http: httpx.AsyncClient, *, at_least: float) -> float:
    """The key's GPU-seconds over all servers in `/metrics`, once the hub has seen that many (60 s at most)."""
    total = 0.0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = (await http.get("/metrics")).text
        total = sum(float(match["value"]) for match in GPU_SAMPLE.finditer(text))
        if total >= at_least:
            break
        await anyio.sleep(0.5)
    return total


async def test_gpu_seconds_reach_status_usage_and_metrics(
    dashboard_platform: DashboardPlatform, live_dashboard: str
) -> None:
    """Two images that each sleep 1 s inside ComfyUI: the status sums at least 2 GPU-seconds, `/api/usage` for the
    period reports the same for key `ci` (2 images, 1 batch), and `/metrics` counts them per server for that key."""
    began = datetime.now(UTC)
    async with httpx.AsyncClient(base_url=live_dashboard, timeout=30) as http:
        created = await http.post("/api/batches", json=slow_spec("gpu-usage", *_nonces(2), seconds=1.0), headers=AUTH)
        assert created.status_code == 202, created.text
        status = await wait_finished(http, created.json()["batch_id"])
        ended = datetime.now(UTC)
        usage = await http.get("/api/usage", params={"from": _iso(began), "to": _iso(ended)}, headers=AUTH)
        before = await http.get("/api/usage", params={"from": _iso(began - timedelta(days=2)),
                                                      "to": _iso(began - timedelta(days=1))}, headers=AUTH)  # fmt: skip
        metrics_total = await _metrics_gpu_seconds(http, at_least=status["gpu_seconds"])

    assert status["state"] == "COMPLETED"
    assert status["gpu_seconds"] >= 2.0
    assert usage.status_code == 200, usage.text
    body = usage.json()
    assert (body["key"], body["images"], body["batches"]) == ("ci", 2, 1)
    assert body["gpu_seconds"] == pytest.approx(status["gpu_seconds"], abs=0.002)
    assert sum(body["servers"].values()) == pytest.approx(body["gpu_seconds"], abs=0.002)
    assert (before.json()["gpu_seconds"], before.json()["images"]) == (0.0, 0)
    assert metrics_total == pytest.approx(status["gpu_seconds"], abs=0.01)


async def test_usage_refuses_a_period_that_ends_before_it_starts(client: httpx.AsyncClient) -> None:
    """`from` after `to` is refused (400) naming `from`, not answered as an empty period."""
    response = await client.get("/api/usage", params={"from": "2026-01-02T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
                                headers=AUTH)  # fmt: skip

    assert response.status_code == 400, response.text
    assert response.json()["problems"][0]["field"] == "from"


async def test_daily_gpu_quota_refuses_new_batches_naming_the_numbers(dashboard_platform: DashboardPlatform) -> None:
    """Once key `ci` has used its daily GPU-seconds, a new batch is refused with 429 naming use and quota."""
    async with dashboard_platform.client() as http:
        used = (await http.get("/api/usage", headers=AUTH)).json()["gpu_seconds"]  # today's, by earlier tests
    quota = used + 0.5
    settings = Settings(output_root=str(dashboard_platform.out), api_keys={"ci": API_KEY},
                        api_quota_gpu_seconds_daily=quota)  # fmt: skip
    app = create_app(settings, Launcher(settings, api_url=dashboard_platform.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        first = await http.post("/api/batches", json=slow_spec("gpu-quota", *_nonces(1), seconds=1.0), headers=AUTH)
        assert first.status_code == 202, first.text
        await wait_finished(http, first.json()["batch_id"])
        refused = await http.post("/api/batches", json=slow_spec("gpu-quota-2", *_nonces(1), seconds=1.0), headers=AUTH)

    assert refused.status_code == 429, refused.text
    assert "GPU-seconds today (UTC)" in refused.text
    assert f"daily quota of {quota:,.1f} GPU-seconds" in refused.text
    assert int(refused.headers["retry-after"]) > 0


async def test_a_batch_retried_in_place_counts_the_image_its_retry_rendered(
    dashboard_platform: DashboardPlatform, tmp_path: Path
) -> None:
    """A failed batch retried in place (Prefect's Retry: the same run scheduled again) renders its failed item; the
    key's usage counts that image too, though the run's images were counted when it first ended."""
    began = datetime.now(UTC)
    period = {"from": _iso(began), "to": _iso(began + timedelta(days=1))}
    async with dashboard_platform.client() as http:
        usage: list[dict[str, Any]] = []

        async def count() -> None:
            usage.append((await http.get("/api/usage", params=period, headers=AUTH)).json())

        await retried_in_place(http, dashboard_platform, tmp_path, between=count)
        await count()

    assert usage[1]["images"] == usage[0]["images"] + 1
