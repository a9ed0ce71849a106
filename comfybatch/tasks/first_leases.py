"""The first lease on each configured server, and its session, readied while a batch's fleet is probed and its jobs
planned."""

import asyncio
import contextlib
from collections.abc import Sequence
from types import TracebackType
from typing import Self
from uuid import UUID

import httpx

from comfybatch.blocks.connection import session_for
from comfybatch.blocks.fleet import configured_servers
from comfybatch.blocks.server import ServerConfig
from comfybatch.settings import Settings
from comfybatch.tasks.leases import LeaseApi

_WAIT_S = 5.0  # for the leases still being taken when the broker starts; past that it asks for them itself


class FirstLeases:
    """One lease on each configured server, taken while the fleet is probed and the batch planned, so that the
    first prompts need not wait for a lease (nor the lease client for its connection) afterwards. Each server's
    session (its event socket) is opened meanwhile too, and kept for the jobs.

    Use `async with`; a `SlotBroker` given it adopts the leases, and those left over go back at its exit.
    """

    def __init__(self, servers: Sequence[ServerConfig]) -> None:
        self.servers = list(servers)
        self.api = LeaseApi()
        self._granted: dict[str, UUID] = {}
        self._taking: asyncio.Task[None] | None = None

    @classmethod
    def configured(cls, settings: Settings, *, only: Sequence[str] = ()) -> Self:
        """For the servers the configuration names (known without a request; blocks-only servers wait for the plan)."""
        return cls([server for server in configured_servers(settings) if not only or server.name in only])

    async def __aenter__(self) -> Self:
        self._taking = asyncio.create_task(self._take())
        # Borrowing a session starts its event socket's connection; the session stays open for a while after its
        # last borrower, and the probe and the jobs come within that time (the probe opens its HTTP connections).
        for server in self.servers:
            async with session_for(server):
                pass
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with contextlib.suppress(TimeoutError):
            await self._finish_taking()
        for lease_id in self._granted.values():
            with contextlib.suppress(httpx.HTTPError):  # else it expires by itself
                await self.api.release(lease_id)
        await self.api.__aexit__(exc_type, exc, tb)

    async def handed(self) -> dict[str, UUID]:
        """The leases taken, by server; the caller owns them from now on."""
        with contextlib.suppress(TimeoutError):  # a slow Prefect server: the broker asks for the rest itself
            await self._finish_taking()
        granted, self._granted = self._granted, {}
        return granted

    async def _finish_taking(self) -> None:
        if self._taking is None:
            return
        # Not cancelled at once: a request cancelled in flight may leave a lease nobody knows of until it expires.
        try:
            await asyncio.wait_for(asyncio.shield(self._taking), _WAIT_S)
        except TimeoutError:
            self._taking.cancel()
            await asyncio.gather(self._taking, return_exceptions=True)
            raise

    async def _take(self) -> None:
        for server in self.servers:
            try:
                granted = await self.api.increment(server.limit_name)
            except httpx.HTTPError:
                return  # the broker asks again
            if granted is not None and not granted.limits:
                # No such limit: a fleet not seen before, whose sync is writing right now. Further writes here would
                # only collide with it (SQLite); the broker makes what is missing on first use.
                with contextlib.suppress(httpx.HTTPError):
                    await self.api.release(granted.lease_id)
                return
            if granted is not None:
                self._granted[server.name] = granted.lease_id
