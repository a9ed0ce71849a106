"""Hand out server slots to one batch's jobs: least-loaded first, instant local hand-off.

The truth across batches and processes is each server's Prefect global concurrency limit
`comfy:<name>`: no prompt is in flight on a server without a lease on it. Every lease is a write
on the Prefect server (SQLite by default), so the broker keeps the leases it holds between its own
jobs and hands a freed one straight to the job that has waited longest for that server (first come,
first served); it gives one back when no job of this batch waits for that server, or a higher-priority
batch does. Other processes' releases are seen by a short poll.

Leases are taken through the lease API directly rather than `concurrency()`: their ids go into
the job journal, so a rerun after a crash adopts the slot its predecessor held instead of waiting
for the lease to expire, and a full limit costs no error log.
"""

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Collection, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self
from uuid import UUID

import httpx
from prefect.exceptions import ObjectAlreadyExists

from comfybatch.blocks.drain import draining_servers
from comfybatch.blocks.server import ServerConfig
from comfybatch.errors import ConfigError
from comfybatch.tasks.first_leases import FirstLeases
from comfybatch.tasks.leases import LEASE_S, LeaseApi, prefect_client
from comfybatch.tasks.priority import DemandBoard

_POLL_S = 0.5  # how soon a slot freed by another process is noticed
_RENEW_EVERY_S = 20.0
_BOARD_EVERY_S = 0.5
_LINGER_S = 1.0  # an idle lease outlives the gap between two jobs, then goes back if nobody here waits
_COOLDOWN_S = (5.0, 300.0)  # circuit breaker: first and longest exclusion of a failing server
# Warm-model routing passes over the job first in line at most this often for later jobs whose models the freed
# server has loaded: a swap costs seconds, but the job first in line must not wait for ever.
_MAX_PASSED_OVER = 4
logger = logging.getLogger(__name__)


class NoServerAvailable(Exception):
    """Internal: no eligible, untried server remains for this job."""


@dataclass(frozen=True)
class Slot:
    """One held slot: the server, and the Prefect lease that accounts for it."""

    server: ServerConfig
    lease_id: str


@dataclass(eq=False)
class _Waiter:
    """A job in line for a slot: the servers it may use, and where a slot (or a wake-up, None) is handed to it."""

    names: frozenset[str]
    handed: "asyncio.Future[Slot | None]"
    trying: bool = False  # taking a slot itself right now (a Prefect request out): hand nothing to it meanwhile
    models: frozenset[str] = frozenset()  # the model files its graph loads (warm-model routing)
    passed_over: int = 0  # times a later job got a slot it could have used, for a warm model
    key: str | None = None  # the job's key: a server joining the fleet is added to the waiters it accepts


class SlotBroker:
    """Slots on the fleet's servers for the jobs of one flow run (one event loop). Use `async with`."""

    def __init__(
        self, servers: Sequence[ServerConfig], *, batch: str = "", priority: int = 0, run_id: str = "",
        first_leases: FirstLeases | None = None,
    ) -> None:  # fmt: skip
        self.servers: dict[str, ServerConfig] = {}
        self._batch, self._priority, self._run_id = batch, priority, run_id
        self._waiting: dict[str, int] = {}
        self._board: DemandBoard | None = None
        self._busy: dict[str, int] = {}  # leases in use by a job
        self._idle: dict[str, list[tuple[UUID, float]]] = {}  # held between jobs
        self._reserving: dict[str, int] = {}
        self._busy_elsewhere_until: dict[str, float] = {}
        self._down_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        # Per server, the model files the last job sent there loads: ComfyUI keeps them (its cache is per node),
        # so a job naming the same files skips seconds of loading there.
        self._warm: dict[str, frozenset[str]] = {}
        for server in servers:
            self._track(server)
        self._removed: set[str] = set()  # left the fleet while the batch ran: no new prompts there
        self._leases: set[UUID] = set()
        self._line: list[_Waiter] = []  # jobs waiting for a slot, oldest first
        self._increments = asyncio.Lock()
        self._last_jobs = False
        self._limits_made: set[str] = set()
        self._leases_api: LeaseApi | None = None
        self._first_leases = first_leases
        self._renewer: asyncio.Task[None] | None = None
        self._draining: frozenset[str] = frozenset()  # `comfybatch fleet drain`: no new prompts there

    async def __aenter__(self) -> Self:
        if self._first_leases is not None:  # its client is connected already; it closes it
            self._leases_api = self._first_leases.api
            for name, lease_id in (await self._first_leases.handed()).items():
                if name in self.servers:
                    self._leases.add(lease_id)
                    self._idle[name].append((lease_id, time.monotonic()))
                else:  # probed unreachable, or not in this batch
                    await self._give_back(name, lease_id)
        else:
            self._leases_api = await LeaseApi().__aenter__()
        await self._read_draining()
        if self._run_id:
            self._board = DemandBoard(self._leases_api, batch=self._batch, priority=self._priority, run_id=self._run_id)
        self._renewer = asyncio.create_task(self._housekeeping())
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        for name in list(self.servers):  # a server may join meanwhile
            await self._release_idle(name, older_than_s=0.0)
        if self._board is not None:
            with contextlib.suppress(httpx.HTTPError):
                await self._board.withdraw()
        if self._leases_api is not None and self._first_leases is None:
            await self._leases_api.__aexit__(exc_type, exc, tb)

    def _track(self, server: ServerConfig) -> None:
        name = server.name
        self.servers[name] = server
        for counts in (self._waiting, self._busy, self._reserving, self._failures):
            counts.setdefault(name, 0)
        for times in (self._busy_elsewhere_until, self._down_until):
            times.setdefault(name, 0.0)
        self._idle.setdefault(name, [])
        self._warm.setdefault(name, frozenset())

    # -- the fleet changing under a running batch (`flows/fleet_watch.py`) ----------------------

    def add_server(self, server: ServerConfig, accepts: Collection[str]) -> None:
        """`server` joined the fleet (or came back, or changed its slots): the jobs whose keys are in `accepts`
        may use it from now on, those waiting in line included."""
        self._removed.discard(server.name)
        self._track(server)
        for waiter in self._line:
            if waiter.key in accepts and server.name not in waiter.names:
                waiter.names |= {server.name}
                self._waiting[server.name] += 1
        self._wake()

    async def remove_server(self, name: str) -> None:
        """`name` left the fleet: no new prompts go there, and the leases held idle for it go back."""
        if name in self._removed or name not in self.servers:
            return
        self._removed.add(name)
        await self._release_idle(name, older_than_s=0.0)

    def is_removed(self, name: str) -> bool:
        return name in self._removed

    # -- health (circuit breaker) ---------------------------------------------------------------

    def load(self, name: str) -> float:
        return self._busy[name] / self.servers[name].slots

    def _held(self, name: str) -> int:
        return self._busy[name] + len(self._idle[name]) + self._reserving[name]

    def warm_models(self, name: str) -> frozenset[str]:
        """The model files the last job sent to `name` loads (empty before any, or without routing)."""
        return self._warm[name]

    def _warmth(self, name: str, models: frozenset[str]) -> int:
        return len(models & self._warm[name])

    def _granted(self, name: str, models: frozenset[str]) -> None:
        if models:  # a job naming no model file leaves the server's loaded models as they were
            self._warm[name] = models

    def models_short(self) -> frozenset[str]:
        """The models loaded on a usable server for which no job waits in line (the fewest first), or none: the
        next job to start should be one of those, so that server has a warm job to take when it frees up."""
        waiting = [waiter.models for waiter in self._line if not waiter.handed.done()]
        counts = [(sum(bool(models & warm) for models in waiting), warm) for name, warm in self._warm.items()
                  if warm and not self.is_down(name)]  # fmt: skip
        fewest = min(counts, key=lambda count: count[0], default=(1, frozenset[str]()))
        return fewest[1] if fewest[0] == 0 else frozenset()

    def is_down(self, name: str) -> bool:
        """Excluded for now: its circuit is open, it is being drained, or it left the fleet."""
        return name in self._draining or name in self._removed or time.monotonic() < self._down_until[name]

    async def _read_draining(self) -> None:
        """The drain list as the batch starts; the fleet watch (`flows/fleet_watch.py`) keeps it current."""
        try:
            self.set_draining(await draining_servers())
        except httpx.HTTPError as exc:  # Prefect briefly away: the fleet watch reads it again soon
            logger.warning("draining servers not read: %s", exc)

    def set_draining(self, draining: frozenset[str]) -> None:
        """`comfybatch fleet drain` says these servers take no new prompts (their prompts in flight finish)."""
        if draining - self._draining:
            logger.info("draining %s: no new prompts go there", ", ".join(sorted(draining - self._draining)))
        if self._draining - draining:
            self._wake()  # a server is back: waiting jobs look again
        self._draining = draining

    def mark_down(self, name: str) -> None:
        """Open the circuit: exclude the server for a cool-down that doubles per failure."""
        self._failures[name] += 1
        first, longest = _COOLDOWN_S
        self._down_until[name] = time.monotonic() + min(longest, first * 2 ** (self._failures[name] - 1))

    def mark_up(self, name: str) -> None:
        if self._down_until[name]:
            self._wake()
        self._failures[name] = 0
        self._down_until[name] = 0.0

    # -- slots ---------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def slot(
        self, eligible: Collection[str], *, exclude: Collection[str] = (), deadline_s: float | None = None,
        models: frozenset[str] = frozenset(), key: str | None = None,
    ) -> AsyncIterator[Slot]:  # fmt: skip
        """Hold one slot on an eligible server until the block exits: of those with room, one that has `models`
        loaded (the job's model files), else the least-loaded; a server with room never stays idle for that.

        Raises:
            NoServerAvailable when every eligible server is excluded, or none frees up before `deadline_s`.
        """
        names = [name for name in eligible if name in self.servers and name not in exclude]
        if not names:
            raise NoServerAvailable
        give_up_at = None if deadline_s is None else time.monotonic() + deadline_s
        slot = await self._acquire(names, give_up_at, models, key)
        try:
            yield slot
        finally:
            await self._park(slot)

    @contextlib.asynccontextmanager
    async def adopt(self, server: str, lease_id: str) -> AsyncIterator[Slot]:
        """Take over a lease an earlier (crashed) run held on `server`.

        Raises:
            NoServerAvailable when the lease has already expired.
        """
        if server not in self.servers or not await self._renew(UUID(lease_id)):
            raise NoServerAvailable
        self._busy[server] += 1
        slot = Slot(self.servers[server], lease_id)
        try:
            yield slot
        finally:
            await self._park(slot)

    async def _acquire(
        self, names: list[str], give_up_at: float | None, models: frozenset[str], key: str | None
    ) -> Slot:
        """First come, first served: a job waits in line, and a slot a job gives back goes straight to the
        longest-waiting job that may use it (`_park`), never to one that asks later."""
        waiter = _Waiter(frozenset(names), asyncio.get_running_loop().create_future(), models=models, key=key)
        self._line.append(waiter)
        for name in waiter.names:
            self._waiting[name] += 1
        try:
            while True:
                if open_now := self._not_awaited_earlier(waiter):  # servers no earlier job waits for: try them now
                    waiter.trying = True  # not handed anything meanwhile: a job holds at most one slot
                    try:
                        slot = await self._take(open_now, models)
                    finally:
                        waiter.trying = False
                    if slot is not None:
                        return slot
                if give_up_at is not None and time.monotonic() >= give_up_at:
                    raise NoServerAvailable
                # Woken by a hand-off, by room made here (a lease given back, a server up again) or by the poll
                # that notices slots other processes freed.
                timeout = _POLL_S if give_up_at is None else max(0.0, min(_POLL_S, give_up_at - time.monotonic()))
                await asyncio.wait([waiter.handed], timeout=timeout)
                if waiter.handed.done() and (slot := waiter.handed.result()) is not None:
                    return slot
                if waiter.handed.done():
                    waiter.handed = asyncio.get_running_loop().create_future()
        except BaseException:
            if waiter.handed.done() and not waiter.handed.cancelled() and (slot := waiter.handed.result()):
                self._line.remove(waiter)
                self._busy[slot.server.name] -= 1
                self._hand_over(slot.server.name, UUID(slot.lease_id))  # cancelled after the hand-off: pass it on
            raise
        finally:
            for name in waiter.names:
                self._waiting[name] -= 1
            if waiter in self._line:
                self._line.remove(waiter)

    def _not_awaited_earlier(self, waiter: "_Waiter") -> list[str]:
        """The servers of `waiter` that no earlier job in line waits for (one trying right now aside)."""
        awaited: set[str] = set()
        for other in self._line:
            if other is waiter:
                break
            if not other.trying and not other.handed.done():
                awaited |= other.names
        return [name for name in self.servers if name in waiter.names and name not in awaited]

    async def _take(self, names: list[str], models: frozenset[str] = frozenset()) -> Slot | None:
        """A slot on a usable server now, or None: warmest for `models` first, then least-loaded; within those,
        a lease this batch already holds (free) before a new one (a write on the Prefect server)."""
        usable = [name for name in names if not self.is_down(name) and not self._outranked(name)]
        random.shuffle(usable)  # ties go to a random server
        # A lease still being asked for counts as load: jobs trying at once at a batch's start spread out.
        usable.sort(key=lambda name: (self._busy[name] + self._reserving[name]) / self.servers[name].slots)
        for warmth in sorted({self._warmth(name, models) for name in usable}, reverse=True):
            group = [name for name in usable if self._warmth(name, models) == warmth]
            if (slot := await self._take_among(group, models)) is not None:
                return slot
        return None

    async def _take_among(self, names: list[str], models: frozenset[str]) -> Slot | None:
        now = time.monotonic()
        for name in names:
            if self._idle[name]:
                lease_id = self._idle[name].pop()[0]
                self._busy[name] += 1
                self._granted(name, models)
                return Slot(self.servers[name], str(lease_id))
        for name in names:
            room = self._held(name) < self.servers[name].slots and self._busy_elsewhere_until[name] <= now
            if not room:
                continue
            # Claimed before the Prefect request: a job trying meanwhile already sees which models go there.
            before = self._warm[name]
            self._granted(name, models)
            if (slot := await self._try_limit(name)) is not None:
                return slot
            if self._warm[name] == models:
                self._warm[name] = before
        return None

    def _hand_over(self, name: str, lease_id: UUID) -> bool:
        """Give a held lease to the longest-waiting job that may use `name` (or a later one whose models `name`
        has loaded, within `_MAX_PASSED_OVER`); else keep it idle. True if handed."""
        if not self.is_down(name) and not self._outranked(name):
            candidates = [waiter for waiter in self._line
                          if name in waiter.names and not waiter.trying and not waiter.handed.done()]  # fmt: skip
            if candidates:
                waiter = self._warmest(name, candidates)
                self._busy[name] += 1
                self._granted(name, waiter.models)
                waiter.handed.set_result(Slot(self.servers[name], str(lease_id)))
                return True
        self._idle[name].append((lease_id, time.monotonic()))
        return False

    def _warmest(self, name: str, candidates: list[_Waiter]) -> _Waiter:
        """The first of `candidates` (oldest first) with the most of its models loaded on `name`; the first
        in line once it has been passed over `_MAX_PASSED_OVER` times."""
        first = candidates[0]
        if first.passed_over >= _MAX_PASSED_OVER:
            return first
        best = max(candidates, key=lambda waiter: self._warmth(name, waiter.models))  # max keeps the first of ties
        if self._warmth(name, best.models) == self._warmth(name, first.models):
            return first
        for waiter in candidates[: candidates.index(best)]:
            waiter.passed_over += 1
        return best

    def _wake(self) -> None:
        """Room was made here (a lease given back, a server up again): waiting jobs look again now."""
        for waiter in self._line:
            if not waiter.handed.done():
                waiter.handed.set_result(None)

    async def _try_limit(self, name: str) -> Slot | None:
        server = self.servers[name]
        self._reserving[name] += 1  # counted as held while the request is out: no local race past `slots`
        try:
            # One new lease at a time: the server serialises these writes anyway (SQLite), and a burst of
            # them (every worker at a batch's start) mostly collides into "database is locked" 503s.
            async with self._increments:
                granted = await self._api.increment(server.limit_name)
        finally:
            self._reserving[name] -= 1
        if granted is None:  # full: other batches or processes hold its slots
            self._busy_elsewhere_until[name] = time.monotonic() + _POLL_S * (1 + random.random())
            return None
        if not granted.limits:
            await self._give_back(name, granted.lease_id)
            if name in self._limits_made:
                raise ConfigError(f"concurrency limit {server.limit_name} is missing (the fleet was not synced)")
            # The fleet's limits are checked beside the batch's start; one deleted meanwhile is made here.
            self._limits_made.add(name)
            with contextlib.suppress(ObjectAlreadyExists):  # the fleet's own check made it first
                async with prefect_client() as client:
                    await client.upsert_global_concurrency_limit_by_name(server.limit_name, server.slots)
            return await self._try_limit(name)
        self._leases.add(granted.lease_id)
        self._busy[name] += 1
        return Slot(server, str(granted.lease_id))

    async def _park(self, slot: Slot) -> None:
        """A job is done with its slot: hand the lease to the next waiting job, or keep it for the next one to
        ask, unless another batch should have it."""
        name, lease_id = slot.server.name, UUID(slot.lease_id)
        self._leases.add(lease_id)
        self._busy[name] -= 1
        if self._hand_over(name, lease_id):
            return
        if self._outranked(name) or (self._last_jobs and self._waiting[name] == 0):
            await self._release_idle(name, older_than_s=0.0)

    def last_jobs(self) -> None:
        """No further jobs will ask for slots (retries aside): a lease nobody waits for goes back at once,
        during the batch's tail rather than at its end."""
        self._last_jobs = True

    async def _release_idle(self, name: str, *, older_than_s: float) -> None:
        now = time.monotonic()
        keep = [(lease, since) for lease, since in self._idle[name] if now - since < older_than_s]
        drop = [lease for lease, since in self._idle[name] if now - since >= older_than_s]
        self._idle[name] = keep
        for lease_id in drop:
            await self._give_back(name, lease_id)

    async def _give_back(self, name: str, lease_id: UUID) -> None:
        self._leases.discard(lease_id)
        try:
            await self._api.release(lease_id)
        except httpx.HTTPError as exc:  # the Prefect server is away; the lease expires by itself
            logger.warning("releasing %s lease %s: %s", name, lease_id, exc)
        self._wake()  # room on `name` again: a job of this batch waiting for it may take a new lease

    async def _renew(self, lease_id: UUID) -> bool:
        try:
            renewed = await self._api.renew(lease_id)
        except httpx.HTTPError:
            return False
        if renewed:
            self._leases.add(lease_id)
        return renewed

    def _outranked(self, name: str) -> bool:
        return self._board is not None and self._board.outranked(name)

    async def _housekeeping(self) -> None:
        """Give back leases nobody here needs, renew the rest, keep the priority board current."""
        last_renewal = time.monotonic()
        while True:
            await asyncio.sleep(_BOARD_EVERY_S)
            if self._board is not None:
                try:
                    await self._board.sync(self._waiting)
                except httpx.HTTPError as exc:  # Prefect briefly away: keep the last view
                    logger.warning("priority board not updated: %s", exc)
            for name in list(self.servers):  # a server may join meanwhile
                unwanted = self._waiting[name] == 0 or self.is_down(name) or self._outranked(name)
                await self._release_idle(name, older_than_s=_LINGER_S if unwanted else LEASE_S / 2)
            if time.monotonic() - last_renewal >= _RENEW_EVERY_S:
                last_renewal = time.monotonic()
                for lease_id in list(self._leases):
                    if not await self._renew(lease_id) and lease_id in self._leases:
                        logger.warning("lease %s could not be renewed; its slot may be counted free early", lease_id)

    @property
    def _api(self) -> LeaseApi:
        if self._leases_api is None:
            raise RuntimeError("use `async with SlotBroker(...)`")
        return self._leases_api


async def fleet_usage(servers: Sequence[ServerConfig]) -> dict[str, tuple[int, int]]:
    """`{server: (active_slots, limit)}` as Prefect sees it right now."""
    usage: dict[str, tuple[int, int]] = {}
    async with prefect_client() as client:
        for limit in await client.read_global_concurrency_limits(limit=200):
            for server in servers:
                if limit.name == server.limit_name:
                    usage[server.name] = (limit.active_slots, limit.limit)
    return usage
