"""Hand out server slots to one batch's jobs: least-loaded first, instant local hand-off.

The truth across batches and processes is each server's Prefect global concurrency limit
`comfy:<name>` (held only from submit to download). Waiting on a full limit is polling in Prefect
(prefect-notes.md §1), so this broker keeps its own count of the slots *this* flow holds and wakes
its waiting jobs the moment one is released; other processes' releases are seen by a short poll.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Collection, Sequence
from contextlib import AsyncExitStack

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError, concurrency
from prefect.exceptions import ObjectNotFound

from comfybatch.blocks.server import ServerConfig
from comfybatch.errors import ConfigError

_POLL_S = 0.5  # how soon a slot freed by another process is noticed
_LEASE_S = 600.0  # renewed by Prefect while held; a dead holder's slot returns after ~this + 15 s
_COOLDOWN_S = (5.0, 300.0)  # circuit breaker: first and longest exclusion of a failing server


class NoServerAvailable(Exception):
    """Internal: no eligible, untried server remains for this job."""


class SlotBroker:
    """Slots on the fleet's servers for the jobs of one flow run (one event loop)."""

    def __init__(self, servers: Sequence[ServerConfig]) -> None:
        self.servers = {server.name: server for server in servers}
        self._held = dict.fromkeys(self.servers, 0)
        self._busy_elsewhere_until = dict.fromkeys(self.servers, 0.0)
        self._down_until = dict.fromkeys(self.servers, 0.0)
        self._failures = dict.fromkeys(self.servers, 0)
        self._changed = asyncio.Condition()

    def load(self, name: str) -> float:
        return self._held[name] / self.servers[name].slots

    def is_down(self, name: str) -> bool:
        return time.monotonic() < self._down_until[name]

    def mark_down(self, name: str) -> None:
        """Open the circuit: exclude the server for a cool-down that doubles per failure."""
        self._failures[name] += 1
        first, longest = _COOLDOWN_S
        self._down_until[name] = time.monotonic() + min(longest, first * 2 ** (self._failures[name] - 1))

    def mark_up(self, name: str) -> None:
        self._failures[name] = 0
        self._down_until[name] = 0.0

    @contextlib.asynccontextmanager
    async def slot(
        self, eligible: Collection[str], *, exclude: Collection[str] = (), deadline_s: float | None = None
    ) -> AsyncIterator[ServerConfig]:
        """Hold one slot on the least-loaded eligible server until the block exits.

        Raises:
            NoServerAvailable when every eligible server is excluded, or none frees up before `deadline_s`.
        """
        names = [name for name in eligible if name in self.servers and name not in exclude]
        if not names:
            raise NoServerAvailable
        give_up_at = None if deadline_s is None else time.monotonic() + deadline_s
        async with AsyncExitStack() as stack:
            server = await self._acquire(names, stack, give_up_at)
            try:
                yield server
            finally:
                await stack.aclose()  # release the Prefect lease before waking local waiters
                async with self._changed:
                    self._held[server.name] -= 1
                    self._changed.notify_all()

    async def _acquire(self, names: list[str], stack: AsyncExitStack, give_up_at: float | None) -> ServerConfig:
        while True:
            now = time.monotonic()
            candidates = [
                name for name in names
                if self._held[name] < self.servers[name].slots and not self.is_down(name)
                and self._busy_elsewhere_until[name] <= now
            ]  # fmt: skip
            random.shuffle(candidates)  # ties go to a random server
            for name in sorted(candidates, key=self.load):
                if await self._try_limit(name, stack):
                    return self.servers[name]
            if give_up_at is not None and now >= give_up_at:
                raise NoServerAvailable
            async with self._changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), timeout=_POLL_S)

    async def _try_limit(self, name: str, stack: AsyncExitStack) -> bool:
        self._held[name] += 1  # reserve locally first: no other local job races for it
        try:
            await stack.enter_async_context(
                concurrency(self.servers[name].limit_name, occupy=1, max_retries=0, strict=True,
                            lease_duration=_LEASE_S, raise_on_lease_renewal_failure=False)
            )  # fmt: skip
        except ConcurrencySlotAcquisitionError as exc:
            self._held[name] -= 1
            if "must be created" in str(exc):
                raise ConfigError(f"concurrency limit {self.servers[name].limit_name} is missing") from exc
            self._busy_elsewhere_until[name] = time.monotonic() + _POLL_S * (1 + random.random())
            return False
        except BaseException:
            self._held[name] -= 1
            raise
        return True


async def fleet_usage(servers: Sequence[ServerConfig]) -> dict[str, tuple[int, int]]:
    """`{server: (active_slots, limit)}` as Prefect sees it right now."""
    usage: dict[str, tuple[int, int]] = {}
    async with get_client() as client:
        for server in servers:
            with contextlib.suppress(ObjectNotFound):
                limit = await client.read_global_concurrency_limit_by_name(server.limit_name)
                usage[server.name] = (limit.active_slots, limit.limit)
    return usage
