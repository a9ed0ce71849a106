"""Priority across concurrently running batches, which may live in different processes or machines.

Prefect's global concurrency limits have no priority, so every running batch posts a small Prefect
variable saying which servers it is waiting for and at what priority. A batch holds back from a
server while a higher-priority batch is waiting for it; posts older than `_STALE_S` (a crashed
batch) are ignored.
"""

import time
from typing import Any

from comfybatch.tasks.leases import LeaseApi

PREFIX = "comfybatch_demand_"
_STALE_S = 10.0
_HEARTBEAT_S = 3.0
_OK, _CREATED, _NO_CONTENT, _NOT_FOUND, _CONFLICT = 200, 201, 204, 404, 409


class DemandBoard:
    """This batch's post on the board, and what the other batches posted."""

    def __init__(self, api: LeaseApi, *, batch: str, priority: int, run_id: str) -> None:
        # Writes go through the fast-retry client: Prefect's own sleeps 2 s and more on a SQLite 503.
        self._api = api
        self.batch = batch
        self.priority = priority
        self.name = PREFIX + run_id.replace("-", "")
        self._others: list[dict[str, Any]] = []
        self._posted: dict[str, int] | None = None
        self._posted_at = 0.0

    def outranked(self, server: str) -> bool:
        """True while a fresher post of a higher-priority batch waits for `server`."""
        now = time.time()
        return any(
            post.get("priority", 0) > self.priority and post.get("waiting", {}).get(server, 0) > 0
            and now - post.get("at", 0) < _STALE_S
            for post in self._others
        )  # fmt: skip

    async def sync(self, waiting: dict[str, int]) -> None:
        """Post our waiting counts (when changed, and as a heartbeat) and read everyone else's."""
        # Only which servers we wait for matters to others: post when that set changes (each post is a
        # database write on the Prefect server), and as a heartbeat.
        waiting = {server: 1 for server, count in waiting.items() if count > 0}
        if waiting != self._posted or time.monotonic() - self._posted_at >= _HEARTBEAT_S:
            await self._post(waiting)
        body = {"variables": {"name": {"like_": PREFIX}}, "limit": 200}
        response = await self._api.send("POST", "/variables/filter", body, accept=(_OK,))
        self._others = [
            variable["value"] for variable in response.json()
            if variable.get("name", "").startswith(PREFIX) and variable.get("name") != self.name
            and isinstance(variable.get("value"), dict)
        ]  # fmt: skip

    async def withdraw(self) -> None:
        await self._api.send("DELETE", f"/variables/name/{self.name}", accept=(_NO_CONTENT, _NOT_FOUND))

    async def _post(self, waiting: dict[str, int]) -> None:
        value = {"batch": self.batch, "priority": self.priority, "waiting": waiting, "at": time.time()}
        response = await self._api.send("PATCH", f"/variables/name/{self.name}", {"value": value},
                                        accept=(_NO_CONTENT, _NOT_FOUND))  # fmt: skip
        if response.status_code == _NOT_FOUND:
            body = {"name": self.name, "value": value, "tags": ["comfybatch"]}
            await self._api.send("POST", "/variables/", body, accept=(_CREATED, _CONFLICT))
        self._posted, self._posted_at = waiting, time.monotonic()
