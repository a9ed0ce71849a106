"""`GET /api/servers` shows which servers `comfybatch fleet drain` took out of rotation."""

import httpx
import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks.drain import set_draining
from comfybatch.blocks.server import name_from_url
from tests.dashboard.conftest import AUTH, DashboardPlatform

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(120)]


async def test_servers_show_the_draining_one(client: httpx.AsyncClient, dashboard_platform: DashboardPlatform) -> None:
    """A drained server is listed with `draining: true`, the others with false; undrained, it is false again."""
    drained, other = (name_from_url(server.url) for server in dashboard_platform.fleet.servers[:2])
    with temporary_settings(updates={PREFECT_API_URL: dashboard_platform.api_url}):
        try:
            await set_draining(drained, True)
            during = {s["name"]: s for s in (await client.get("/api/servers", headers=AUTH)).json()["servers"]}
        finally:
            await set_draining(drained, False)
        after = {s["name"]: s for s in (await client.get("/api/servers", headers=AUTH)).json()["servers"]}

    assert (during[drained]["draining"], during[other]["draining"]) == (True, False)
    assert after[drained]["draining"] is False
