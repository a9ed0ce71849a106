"""Issue 12 §3: an outage reaches the SDK as 503 + Retry-After, and the SDK's retry creates the batch once."""

import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterIdempotencyKey

from comfybatch.client import AsyncComfyBatchClient
from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from tests.dashboard.conftest import API_KEY, DashboardPlatform

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


class _ServedAfterFirstOutage(httpx.AsyncBaseTransport):
    """The dashboard app in process; after its first 503, `serve()` runs (the operator starts `comfybatch serve`)."""

    def __init__(self, app: httpx.ASGITransport, serve: Callable[[], Awaitable[None]]) -> None:
        self.app = app
        self.serve = serve
        self.answers: list[tuple[str | None, int, str | None]] = []  # (Idempotency-Key, status, Retry-After)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.app.handle_async_request(request)
        if request.url.path == "/api/batches":
            self.answers.append(
                (request.headers.get("idempotency-key"), response.status_code, response.headers.get("retry-after"))
            )
            if response.status_code == 503 and len(self.answers) == 1:
                await self.serve()
        return response


async def test_submit_during_an_outage_is_retried_with_one_key_and_creates_one_batch(
    dashboard_platform: DashboardPlatform,
) -> None:
    """A dashboard whose deployment is not served answers the SDK's submit 503 + Retry-After; once it is served the
    SDK's retry (same Idempotency-Key) answers 202, and Prefect holds exactly one run for that key."""
    settings = dashboard_platform.settings()
    late = f"late-{uuid.uuid4().hex[:8]}"
    flow_name = GENERATE_BATCH.split("/")[0]
    launcher = Launcher(
        settings, api_url=dashboard_platform.api_url, deployment=f"{GENERATE_BATCH.split('/')[0]}/{late}"
    )
    async with PrefectClient(dashboard_platform.api_url) as prefect:
        flow = await prefect.read_flow_by_name(flow_name)
        deployment_ids = []

        async def serve() -> None:
            deployment_ids.append(await prefect.create_deployment(flow_id=flow.id, name=late))

        transport = _ServedAfterFirstOutage(httpx.ASGITransport(app=create_app(settings, launcher)), serve)
        try:
            async with AsyncComfyBatchClient("http://dashboard", API_KEY, transport=transport) as client:
                started = await client.submit_batch(["a fox in the rain"], batch_name=f"sdk-outage-{late}")
            keys = {key for key, _, _ in transport.answers}
            runs = await prefect.read_flow_runs(flow_run_filter=FlowRunFilter(
                idempotency_key=FlowRunFilterIdempotencyKey(any_=[f"ci:{key}" for key in keys])))  # fmt: skip
        finally:
            for deployment_id in deployment_ids:
                await prefect.delete_deployment(deployment_id)

    assert [(status, retry_after) for _, status, retry_after in transport.answers] == [(503, "5"), (202, None)]
    assert len(keys) == 1
    assert None not in keys
    assert [str(run.id) for run in runs] == [started.batch_id]
