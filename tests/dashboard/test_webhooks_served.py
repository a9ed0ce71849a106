"""Webhooks the way production sends them: a batch created through the API runs in `comfybatch serve`, and both
its own webhook and its API key's are told when it starts and when a cancel ends it."""

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings
from tests.conftest import SuiteFleet
from tests.dashboard.conftest import API_KEY, AUTH, slow_spec, wait_finished
from tests.platform.conftest import serve_env, serving
from tests.support.webhook_receiver import SECRET, Delivery, Receiver, running_receiver

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def hooked_platform(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Receiver, str, Path]]:
    """A receiver, then `comfybatch serve` whose flows sign with SECRET and may reach loopback, with key `ci`'s
    webhook at `<receiver>/key`."""
    root = tmp_path_factory.mktemp("hooked-platform")
    with running_receiver(Receiver(failures=0)) as (receiver, base):
        hooks = {"COMFYBATCH_WEBHOOK_SECRET": SECRET, "COMFYBATCH_WEBHOOK_ALLOW_PRIVATE": "true",
                 "COMFYBATCH_API_KEY_WEBHOOKS": f"ci:{base}/key"}  # fmt: skip
        env = serve_env(platform_prefect.api_url, comfy_fleet, root, **hooks)
        with serving(platform_prefect.api_url, env, root, GENERATE_BATCH):
            yield receiver, base, root / "out"


async def _delivered(receiver: Receiver, path: str, kind: str, *, timeout_s: float) -> list[Delivery]:
    """The `kind` deliveries to `path` once there is one (or none after `timeout_s`)."""
    deadline = time.monotonic() + timeout_s
    found: list[Delivery] = []
    while time.monotonic() < deadline:
        if found := receiver.delivered(path).get(kind, []):
            break
        await anyio.sleep(0.2)
    return found


async def test_a_cancelled_served_batch_tells_its_webhook_and_its_keys(
    platform_prefect: LocalPrefectServer, hooked_platform: tuple[Receiver, str, Path]
) -> None:
    """Created through the API with a webhook, rendered by `comfybatch serve`, then cancelled: the batch's webhook
    and key `ci`'s both get a signed batch.started and one batch.finished (one webhook-id, however often it is
    written) that says who cancelled it."""
    receiver, base, out = hooked_platform
    settings = Settings(output_root=str(out), api_keys={"ci": API_KEY}, webhook_secret=SECRET,
                        webhook_allow_private=True)  # fmt: skip
    spec = {
        **slow_spec("hooked-served", *(uuid.uuid4().hex for _ in range(20)), seconds=1.0),
        "webhook": f"{base}/batch",
    }
    app = create_app(settings, Launcher(settings, api_url=platform_prefect.api_url))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard") as http:
        created = await http.post("/api/batches", json=spec, headers=AUTH)
        assert created.status_code == 202, created.text
        batch_id = created.json()["batch_id"]
        assert await _delivered(receiver, "/batch", "batch.started", timeout_s=90)
        assert (await http.post(f"/api/batches/{batch_id}/cancel", headers=AUTH)).status_code == 202
        final = await wait_finished(http, batch_id, timeout_s=120)

    assert final["state"] == "CANCELLED"
    for path in ("/batch", "/key"):
        finished = await _delivered(receiver, path, "batch.finished", timeout_s=60)  # the runner's hook may send it
        assert [d.body["type"] for d in receiver.delivered(path)["batch.started"]] == ["batch.started"]
        assert finished, f"no batch.finished at {path}"
        assert len({d.webhook_id for d in finished}) == 1
        assert "cancelled by ci" in finished[0].body["data"]["ended"]
        assert finished[0].body["data"]["flow_run_id"] == batch_id
    assert all(d.signature_ok for d in receiver.deliveries)
