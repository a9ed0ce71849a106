"""A running batch follows its fleet: a server added or enabled (a `ComfyUI Server` block, `comfybatch.toml`)
starts taking prompts, one removed or disabled takes no new prompt and hands back the prompts still waiting in
its queue, and one drained (`comfybatch fleet drain`) takes no new prompt, within `FLEET_POLL_S` (plus a probe for
a server joining).

A server that was down when the batch started is in the fleet but not in the batch: it joins once it answers.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection, Sequence

import httpx

from comfybatch.blocks.drain import draining_servers
from comfybatch.blocks.fleet import configured_servers, fleet_now, saved_servers, sync_limits
from comfybatch.blocks.server import ServerConfig
from comfybatch.errors import ComfyBatchError
from comfybatch.flows.plan import plan_fleet, probe_fleet
from comfybatch.models import JobSpec
from comfybatch.settings import Settings
from comfybatch.tasks.job import JobContext
from comfybatch.tasks.leases import prefect_client

FLEET_POLL_S = 2.0
logger = logging.getLogger(__name__)


class FleetWatch:
    """Re-reads the fleet every `FLEET_POLL_S` while a batch (or shard) renders, and tells its broker."""

    def __init__(
        self, settings: Settings, context: JobContext, jobs: Sequence[JobSpec], *, only: Collection[str] = (),
        classes: Collection[str] | None = None,
    ) -> None:  # fmt: skip
        self._settings, self._context, self._jobs = settings, context, jobs
        self._only, self._classes = frozenset(only), classes
        self._silent: set[str] = set()  # servers already reported unreachable: said once, probed again quietly

    async def run(self, drained: asyncio.Event, grow: Callable[[int], None]) -> None:
        """Until `drained`; `grow(n)` adds n workers when servers join (their slots, plus one to wait in line)."""
        while not drained.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), FLEET_POLL_S)
            if drained.is_set():
                return
            try:
                await self.check(grow)
            except (httpx.HTTPError, ComfyBatchError, OSError) as exc:  # the batch goes on with the fleet it has
                logger.warning("fleet not re-read: %s", exc)

    async def check(self, grow: Callable[[int], None]) -> None:
        """One look at the fleet: servers gone are removed, new or changed ones probed and added."""
        broker = self._context.broker
        async with prefect_client() as client:  # one client for both reads
            saved, draining = await asyncio.gather(saved_servers(client), draining_servers(client))
        broker.set_draining(draining)
        # With `only` (`BatchSpec.servers`, `comfybatch run --server`), the named servers, `cli` blocks included.
        fleet = fleet_now(configured_servers(self._settings), saved, only=sorted(self._only))
        for name in [name for name in broker.servers if name not in fleet and not broker.is_removed(name)]:
            await broker.remove_server(name)
            moved = await self._context.in_flight.move_queued(broker.servers[name])
            logger.info("%s left the fleet: no new prompts go there; %d queued prompt(s) moved elsewhere", name, moved)
        changed = [server for name, server in fleet.items() if self._changed(server)]
        if changed:
            probes, infos = await probe_fleet(changed, classes=self._classes)
            for server, probe in zip(changed, probes, strict=True):
                if server.name in infos:
                    plan = plan_fleet(self._jobs, [probe], {server.name: infos[server.name]})
                    await self._join(server, plan.eligible, grow)
                elif server.name not in self._silent:
                    self._silent.add(server.name)
                    logger.info("%s is in the fleet but does not answer (%s); it joins once it does", server.name,
                                probe.error)  # fmt: skip

    def _changed(self, server: ServerConfig) -> bool:
        known = self._context.broker.servers.get(server.name)
        return known is None or self._context.broker.is_removed(server.name) or known != server

    async def _join(
        self, server: ServerConfig, eligible: dict[str, tuple[str, ...]], grow: Callable[[int], None]
    ) -> None:
        broker, name = self._context.broker, server.name
        known = broker.servers.get(name)
        new = known is None or broker.is_removed(name)
        accepts = {key for key, names in eligible.items() if name in names}
        for key in accepts:
            if name not in self._context.eligible.get(key, ()):
                self._context.eligible[key] = (*self._context.eligible.get(key, ()), name)
        if known is None or known.slots != server.slots:
            await sync_limits([server])  # its `comfy:<name>` limit, sized to its slots
        broker.add_server(server, accepts)
        grow(server.slots + 1 if new or known is None else max(0, server.slots - known.slots))
        self._silent.discard(name)
        logger.info("%s joined the fleet: %d job(s) of this batch may run there", name, len(accepts))
