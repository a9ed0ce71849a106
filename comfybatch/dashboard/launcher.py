"""The dashboard's only link to Prefect and the output store (the test seam)."""

import asyncio
import hashlib
import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID
from weakref import WeakKeyDictionary, WeakValueDictionary

import httpx
from cachetools import LRUCache, TTLCache
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterEndTime,
    FlowRunFilterIdempotencyKey,
    FlowRunFilterName,
    FlowRunFilterStartTime,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import PrefectEventsClient, get_events_client
from prefect.events.schemas.events import Event, RelatedResource, Resource
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Cancelling
from pydantic import ValidationError

from comfybatch.blocks.drain import draining_servers
from comfybatch.blocks.fleet import saved_servers
from comfybatch.blocks.server import ServerConfig
from comfybatch.dashboard.cache import SharedFetches
from comfybatch.dashboard.events import history_filter
from comfybatch.dashboard.schemas import TERMINAL_STATES
from comfybatch.deployments.names import GENERATE_BATCH  # no Prefect flow machinery at the dashboard's start
from comfybatch.errors import (
    BatchConflict,
    BatchNotFound,
    ComfyBatchError,
    IdempotencyKeyReused,
    PlatformUnavailable,
)
from comfybatch.flows.preview import BatchPreview, preview_batch
from comfybatch.models import BatchSpec, JobSpec
from comfybatch.outputs.identity import RUNS_FOLDER, find_folder, request_identity, run_folder
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, JobRecord, read_plan
from comfybatch.run_tags import RESUMED_FROM, SUBMITTED_BY, resuming, tag
from comfybatch.settings import Settings

BATCH_COUNT_LIMIT = 200  # the Prefect API's page cap: `/metrics` counts the newest this many batches
ACTIVE_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
logger = logging.getLogger(__name__)
_HAS_PROCESS = {StateType.RUNNING, StateType.PAUSED}  # a cancel goes through Cancelling: the runner stops it
_EXECUTING = {StateType.RUNNING, StateType.CANCELLING}  # the flow may still write records
_PLANS_KEPT = 64
_JOURNALS_KEPT = 64
_SETTLED_KEPT = 256
CANCELLED_BY = "cancelled by "  # a cancel's message: who asked, then any explanation after ": "
_STARTED_KEPT = 10_000
# How stale a polled run or list may be while many clients poll. An ended run too: Prefect's "Retry" and the rerun
# automation of a crashed batch (deploy/rerun-crashed.yaml) run it again in place.
_POLL_TTL_S = 1.0
T = TypeVar("T")
_DEPLOYMENT_TTL_S = 30.0  # a re-served deployment gets a new id; within this a request may see the old one


def body_fingerprint(spec_parameter: Any) -> str:
    """sha256 of a batch request's canonical JSON (the run's `spec` parameter): what an Idempotency-Key repeats."""
    canonical = json.dumps(spec_parameter, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _ended(run: FlowRun) -> BatchConflict | None:
    if run.state_type is None or run.state_type.value not in TERMINAL_STATES:
        return None
    return BatchConflict(f"batch {run.id} has already ended ({run.state_type.value}): there is nothing to cancel")


def this_run(records: dict[str, JobRecord], run: FlowRun) -> dict[str, JobRecord]:
    """The journal as `run` sees it: a failed or cancelled record that an earlier run of the batch left is work this
    one (a resume) renders again, so it counts as not started yet rather than as this run's failure."""
    if run.created is None:
        return records
    since = run.created.timestamp()
    return {key: record for key, record in records.items() if not _left_before(record, since)}


def _left_before(record: JobRecord, since: float) -> bool:
    result = record.result
    return result is not None and result.status in ("failed", "cancelled") and (result.finished_at or 0.0) < since


@dataclass(frozen=True)
class _JournalRead:
    """A run's journal as last read during one execution, and when that execution began as first seen executing
    (None: seen only before or after it executed, when nothing writes)."""

    records: dict[str, JobRecord]
    since: float | None


def _unchanging(record: JobRecord, since: float | None) -> bool:
    """Whether a finished record read before still holds: a done one always (nothing renders it again); a failed
    or cancelled one unless it is older than the execution that began at `since`, which renders it again."""
    result = record.result
    if result is None:
        return False
    return result.status == "done" or since is None or (result.finished_at or 0.0) >= since


class Launcher:
    """Start, list, read and cancel batches: flow runs of `generate-batch`, outputs in the store."""

    def __init__(self, settings: Settings, *, api_url: str | None = None, deployment: str = GENERATE_BATCH) -> None:
        self.settings = settings
        self.api_url = api_url
        self.deployment = deployment
        # A run's stored plan never changes once written: parsed once, kept for the newest runs read.
        self._plans: LRUCache[UUID, list[JobSpec]] = LRUCache(maxsize=_PLANS_KEPT)
        # Answers about runs that ended a while ago (their record no longer changes until someone resumes them or
        # runs them again in place), by what the answer depends on: a status read of a finished 100,000-image batch
        # costs a lookup.
        self.settled: LRUCache[Hashable, Any] = LRUCache(maxsize=_SETTLED_KEPT)
        self._journals: LRUCache[tuple[UUID, int], _JournalRead] = LRUCache(maxsize=_JOURNALS_KEPT)
        self._folders: dict[UUID, str] = {}  # new_version runs: the version folder each claimed
        self._endings: dict[UUID, str] = {}  # why a run ended, by its final state (a run can end again in place)
        # idempotency key -> the run it created and the fingerprint of the body it was created from
        self._started: LRUCache[str, tuple[UUID, str]] = LRUCache(maxsize=_STARTED_KEPT)
        self._creating: dict[str, tuple[str, asyncio.Future[tuple[FlowRun, str]]]] = {}
        # server name -> (when, why) of the last failed probe this process saw: the fleet panel's "last error"
        self.probe_failures: dict[str, tuple[datetime, str]] = {}
        self._resumed: set[UUID] = set()  # runs this process created by `resume` and recorded
        self._cancelling: WeakValueDictionary[UUID, asyncio.Lock] = WeakValueDictionary()
        # Between `open()` and `aclose()` (the app's lifespan) one Prefect client serves every request:
        # a new one per request costs a TLS context and a connection. Without a lifespan, one per call.
        self._clients: WeakKeyDictionary[asyncio.AbstractEventLoop, PrefectClient] = WeakKeyDictionary()
        self._keep_client = False
        self._events_client: PrefectEventsClient | None = None
        self._deployment_ids: TTLCache[str, UUID] = TTLCache(maxsize=1, ttl=_DEPLOYMENT_TTL_S)
        self._recent = SharedFetches(ttl_s=_POLL_TTL_S)  # only while kept open: tasks belong to the app's loop

    def _new_client(self) -> PrefectClient:
        api_url = self.api_url or PREFECT_API_URL.value()
        return PrefectClient(api_url) if api_url else get_client()

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[PrefectClient]:
        """The Prefect client; Prefect unreachable is an outage (503, retry later), never an internal error."""
        try:
            if not self._keep_client:
                async with self._new_client() as client:
                    yield client
                return
            loop = asyncio.get_running_loop()
            kept = self._clients.get(loop)
            if kept is None:
                kept = self._clients[loop] = self._new_client()
                await kept.__aenter__()
            yield kept
        except httpx.TransportError as exc:
            raise PlatformUnavailable(f"the Prefect API does not answer ({type(exc).__name__})") from None

    def open(self) -> None:
        """Keep one Prefect client open per event loop until `aclose()`."""
        self._keep_client = True

    async def aclose(self) -> None:
        """Close this event loop's kept Prefect clients."""
        self._keep_client = False
        self._recent.clear()
        if (client := self._clients.pop(asyncio.get_running_loop(), None)) is not None:
            await client.__aexit__(None, None, None)
        if (events := self._events_client) is not None:
            self._events_client = None
            await events.__aexit__(None, None, None)

    async def _shared(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        """`fetch()`, shared between requests for a moment while the app runs (see `SharedFetches`)."""
        if not self._keep_client:
            return await fetch()
        return await self._recent.get(key, fetch)

    async def _deployment_id(self, client: PrefectClient) -> UUID:
        if (known := self._deployment_ids.get(self.deployment)) is not None:
            return known
        try:
            deployment = await client.read_deployment_by_name(self.deployment)
        except ObjectNotFound as exc:
            raise PlatformUnavailable(f"deployment {self.deployment!r} is not served (run `comfybatch serve`)") from exc
        self._deployment_ids[self.deployment] = deployment.id
        return deployment.id

    async def start(self, spec: BatchSpec, idempotency_key: str | None, submitted_by: str) -> FlowRun:
        """Create a flow run of `generate-batch`; the same `idempotency_key` and body return the same run.

        Raises:
            IdempotencyKeyReused: the key already created a batch from a different body.
            PlatformUnavailable: the deployment is not served.
        """
        parameter = spec.model_dump(mode="json")
        if not idempotency_key:
            return await self._create(spec.name, parameter, None, submitted_by)
        # Namespaced by key name, so two clients choosing the same key never share a batch.
        scoped_key = f"{submitted_by}:{idempotency_key}"
        body = body_fingerprint(parameter)
        if (known := self._started.get(scoped_key)) is not None:
            self._check_same_body(idempotency_key, known, body)
            return await self.get(known[0])  # a retry: no write to Prefect at all
        # Retries racing the first request wait for its answer instead of each writing to Prefect.
        creating = self._creating.get(scoped_key)
        if creating is None or creating[1].done():
            future = asyncio.ensure_future(self._create_keyed(spec.name, parameter, scoped_key, submitted_by))
            creating = self._creating[scoped_key] = (body, future)
            future.add_done_callback(lambda done: self._forget_creating(scoped_key, done))
        elif creating[0] != body:
            raise self._reused(idempotency_key, None)
        run, stored = await asyncio.shield(creating[1])
        self._check_same_body(idempotency_key, (run.id, stored), body)
        return run

    def _forget_creating(self, scoped_key: str, done: "asyncio.Future[tuple[FlowRun, str]]") -> None:
        if (creating := self._creating.get(scoped_key)) is not None and creating[1] is done:
            del self._creating[scoped_key]

    def _check_same_body(self, idempotency_key: str, known: tuple[UUID, str], body: str) -> None:
        if known[1] != body:
            raise self._reused(idempotency_key, known[0])

    @staticmethod
    def _reused(idempotency_key: str, run_id: UUID | None) -> IdempotencyKeyReused:
        batch = f"batch {run_id}" if run_id is not None else "a batch"
        return IdempotencyKeyReused(f"Idempotency-Key {idempotency_key!r} was already used to start {batch} from a "
                                    "different request body; send a new key with a new request")  # fmt: skip

    async def _create_keyed(
        self, name: str, parameter: dict[str, Any], scoped_key: str, submitted_by: str
    ) -> tuple[FlowRun, str]:
        """The key's run and its body's fingerprint: found in Prefect (created before this process started), else
        created now."""
        async with self._client() as client:
            key_filter = FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[scoped_key]))
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[await self._deployment_id(client)]))
            found = await client.read_flow_runs(flow_run_filter=key_filter, deployment_filter=deployment_filter,
                                                limit=1)  # fmt: skip
        run = found[0] if found else await self._create(name, parameter, scoped_key, submitted_by)
        # Prefect returns the key's existing run to a create as well: the body is always the stored one's.
        stored = body_fingerprint(run.parameters.get("spec"))
        self._started[scoped_key] = (run.id, stored)
        return run, stored

    async def _create(self, name: str, parameter: dict[str, Any], scoped_key: str | None, submitted_by: str) -> FlowRun:
        async with self._client() as client:
            run = await client.create_flow_run_from_deployment(
                await self._deployment_id(client),
                parameters={"spec": parameter},
                name=name,  # listed and found by `?name=` before the flow starts and names itself the same
                idempotency_key=scoped_key,
                tags=["comfybatch", "dashboard", tag(SUBMITTED_BY, submitted_by)],
            )
        await self.record(run, "submitted", by=submitted_by)
        return run

    async def list_batches(self, *, state: str | None, name: str | None, limit: int, offset: int) -> list[FlowRun]:
        """Flow runs of `generate-batch`, newest first, filtered by state type and batch name."""
        key = ("list", state, name, limit, offset)
        return await self._shared(key, lambda: self._list_batches(state=state, name=name, limit=limit, offset=offset))

    async def _list_batches(self, *, state: str | None, name: str | None, limit: int, offset: int) -> list[FlowRun]:
        run_filter = FlowRunFilter(
            name=FlowRunFilterName(any_=[name]) if name else None,
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(state.upper())])) if state else None,
        )
        async with self._client() as client:
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[await self._deployment_id(client)]))
            return await client.read_flow_runs(
                flow_run_filter=run_filter, deployment_filter=deployment_filter,
                sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=limit, offset=offset,
            )  # fmt: skip

    async def get(self, flow_run_id: UUID) -> FlowRun:
        """The flow run of a batch.

        Raises:
            BatchNotFound: no such flow run, or not one of `generate-batch`.
        """
        return await self._shared(("run", flow_run_id), lambda: self._read_run(flow_run_id))

    async def _read_run(self, flow_run_id: UUID) -> FlowRun:
        async with self._client() as client:
            try:
                run = await client.read_flow_run(flow_run_id)
            except ObjectNotFound as exc:
                raise BatchNotFound(f"no batch {flow_run_id}") from exc
            if run.deployment_id != await self._deployment_id(client):
                raise BatchNotFound(f"no batch {flow_run_id}")
            return run

    async def cancel(self, flow_run_id: UUID, cancelled_by: str) -> FlowRun:
        """Ask Prefect to cancel a batch (state Cancelling; the runner stops the run); record who asked.

        A batch already cancelling is answered as it is: no second state, no second event.

        Raises:
            BatchNotFound, BatchConflict: the batch has already ended.
        """
        lock = self._cancelling.get(flow_run_id)
        if lock is None:
            lock = self._cancelling[flow_run_id] = asyncio.Lock()
        async with lock:  # two cancels of one batch in this process: the second sees the first one's state
            run = await self._read_run(flow_run_id)  # never a shared answer: it may predate a cancel
            if run.state_type == StateType.CANCELLING:
                return run
            if (ended := _ended(run)) is not None:
                raise ended
            message = f"{CANCELLED_BY}{cancelled_by}"
            # A run whose process has not started has nothing to stop: a runner would never move it on from
            # Cancelling. Not forced: Prefect's rules refuse to move a run that ended meanwhile.
            proposed: State[Any] = (
                Cancelling(message=message) if run.state_type in _HAS_PROCESS else Cancelled(message=message)
            )
            async with self._client() as client:
                result: OrchestrationResult[Any] = await client.set_flow_run_state(flow_run_id, proposed, force=False)
                run = await client.read_flow_run(flow_run_id)
            self._recent.forget(("run", flow_run_id))
            # Prefect may answer with its own state: Cancelled for a run it knows has no process to stop.
            cancelled_now = result.status == SetStateStatus.ACCEPT or (
                result.status == SetStateStatus.REJECT and result.state is not None
                and result.state.type == StateType.CANCELLED
            )  # fmt: skip
            if cancelled_now:
                await self.record(run, "cancel-requested", by=cancelled_by)
                return run
            if run.state_type == StateType.CANCELLING:  # someone else asked first
                return run
            reason = getattr(result.details, "reason", None) or result.status.value
            state = run.state_type.value if run.state_type else "UNKNOWN"
            raise _ended(run) or BatchConflict(
                f"batch {flow_run_id} is {state}: Prefect refused to cancel it ({reason})"
            )

    async def resume(self, flow_run_id: UUID, resumed_by: str) -> FlowRun:
        """Start the ended batch again: a new run with the same request and name, tagged `resumed-from:<old id>`,
        which renders what the journal does not hold as done (failed, cancelled, never started). Asking twice for
        one run answers the same new run (its idempotency key is the old run's id).

        Raises:
            BatchNotFound, BatchConflict: the batch is still under way, or was a dry run.
        """
        run = await self._read_run(flow_run_id)  # never a shared answer: it may predate the run's end
        spec = self.spec_of(run)
        if run.state_type is None or run.state_type.value not in TERMINAL_STATES:
            state = run.state_type.value if run.state_type else "UNKNOWN"
            raise BatchConflict(f"batch {spec.name} ({flow_run_id}) is {state}: cancel it or let it end first")
        if spec.dry_run:
            raise BatchConflict(f"batch {spec.name} ({flow_run_id}) was a dry run: it renders nothing to resume")
        tags = resuming(run.tags, run.id)
        async with self._client() as client:
            resumed = await client.create_flow_run_from_deployment(
                await self._deployment_id(client), parameters={"spec": run.parameters.get("spec")}, name=run.name,
                idempotency_key=tag(RESUMED_FROM, run.id), tags=tags,
            )  # fmt: skip
        self._recent.forget(("resumed-as", run.id))  # a read shared from before the resume would hide the new run
        if resumed.id not in self._resumed:  # a repeated ask (same idempotency key) is recorded once
            self._resumed.add(resumed.id)
            await self.record(resumed, "resumed", by=resumed_by, resumed_from=str(run.id))
        return resumed

    async def resumed_as(self, run: FlowRun) -> UUID | None:
        """The newest run resuming this ended one (tagged `resumed-from:<id>`), or None; a read, shared briefly."""
        if run.state_type is None or run.state_type.value not in TERMINAL_STATES:
            return None

        async def newest() -> UUID | None:
            run_filter = FlowRunFilter(tags=FlowRunFilterTags(all_=[tag(RESUMED_FROM, run.id)]))
            async with self._client() as client:
                found = await client.read_flow_runs(
                    flow_run_filter=run_filter, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1
                )
            return found[0].id if found else None

        return await self._shared(("resumed-as", run.id), newest)

    async def record(self, run: FlowRun, action: str, **payload: Any) -> None:
        """Emit `comfybatch.batch.<action>` for the batch's run: who did what, by key name (never the key)."""
        event = Event(
            event=f"comfybatch.batch.{action}",
            resource=Resource(
                {"prefect.resource.id": f"comfybatch.batch.{run.name}", "prefect.resource.name": run.name}
            ),
            related=[RelatedResource({"prefect.resource.id": f"prefect.flow-run.{run.id}",
                                      "prefect.resource.role": "flow-run"})],
            payload=payload,
        )  # fmt: skip
        if not self._keep_client:
            async with self._new_events_client() as events:
                await events.emit(event)
            return
        if self._events_client is None:  # one socket for the app's life: a new one per submit costs a handshake
            self._events_client = self._new_events_client()
            await self._events_client.__aenter__()
        await self._events_client.emit(event)

    def _new_events_client(self) -> PrefectEventsClient:
        client = PrefectEventsClient(self.api_url) if self.api_url else get_events_client()
        assert isinstance(client, PrefectEventsClient)
        return client

    async def history(self, flow_run_id: UUID, since: datetime) -> list[Event]:
        """The run's stored `comfybatch.*` and flow-run state events, oldest first (every page)."""
        events: list[Event] = []
        async with self._client() as client:
            page = await client.read_events(history_filter(flow_run_id, since), limit=50)
            events += page.events
            while page.next_page is not None:
                page = await client.read_events_page(str(page.next_page))
                events += page.events
        return events

    async def preview(self, spec: BatchSpec) -> BatchPreview:
        """The dry run of `spec` against the fleet (validate and create only: it probes every server)."""
        if self.api_url:
            with temporary_settings({PREFECT_API_URL: self.api_url}):
                return await preview_batch(spec, self.settings)
        return await preview_batch(spec, self.settings)

    async def plan(self, spec: BatchSpec, run_id: UUID) -> list[JobSpec] | None:
        """The batch's jobs in order as its flow stored them before the first prompt; None before that.

        Read from the output store only (no expansion, no server, no Prefect); parsed once per run.
        """
        if (jobs := self._plans.get(run_id)) is not None:
            return jobs
        store, batch_dir = self.store_of(spec), await self.batch_dir(spec, run_id)
        if spec.new_version and not await asyncio.to_thread(store.exists, f"{batch_dir}/{RUNS_FOLDER}/{run_id}"):
            return None  # not claimed yet: the name's folder may hold another request's plan
        jobs = await asyncio.to_thread(read_plan, store, batch_dir, batch=spec.name)
        if jobs is not None:  # not yet written: ask again next time
            self._plans[run_id] = jobs
        return jobs

    async def active_batches(self, submitted_by: str) -> list[FlowRun]:
        """Batches of this key that are not finished yet (scheduled, pending, running, paused)."""
        run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE_STATES)))
        async with self._client() as client:
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[await self._deployment_id(client)]))
            runs = await client.read_flow_runs(flow_run_filter=run_filter, deployment_filter=deployment_filter,
                                               limit=BATCH_COUNT_LIMIT)  # fmt: skip
        return [run for run in runs if tag(SUBMITTED_BY, submitted_by) in run.tags]

    async def key_runs(self, submitted_by: str, since: datetime, until: datetime) -> list[FlowRun]:
        """Batches this key submitted that ran at some time in [since, until]: started before `until`, and still
        running or ended after `since` (at most 10,000 of each)."""
        flow_filter = FlowFilter(name=FlowFilterName(any_=[GENERATE_BATCH.split("/", 1)[0]]))
        tagged = FlowRunFilterTags(all_=[tag(SUBMITTED_BY, submitted_by)])
        started = FlowRunFilterStartTime(before_=until)
        runs: dict[UUID, FlowRun] = {}
        async with self._client() as client:
            for ended in (FlowRunFilterEndTime(after_=since), FlowRunFilterEndTime(is_null_=True)):
                run_filter = FlowRunFilter(tags=tagged, start_time=started, end_time=ended)
                for offset in range(0, 50 * BATCH_COUNT_LIMIT, BATCH_COUNT_LIMIT):
                    page = await client.read_flow_runs(flow_filter=flow_filter, flow_run_filter=run_filter,
                                                       limit=BATCH_COUNT_LIMIT, offset=offset)  # fmt: skip
                    runs.update((run.id, run) for run in page if run.start_time is not None)
                    if len(page) < BATCH_COUNT_LIMIT:
                        break
        return list(runs.values())

    async def healthy(self) -> str | None:
        """None when the Prefect API answers its health check, else what went wrong."""
        async with self._client() as client:
            error = await client.api_healthcheck()
        return None if error is None else f"{type(error).__name__}: {error}"

    async def saved_servers(self) -> list[ServerConfig]:
        """The `ComfyUI Server` blocks of this Prefect API, as configs (disabled ones included)."""
        if not self.api_url:
            return await saved_servers()
        with temporary_settings({PREFECT_API_URL: self.api_url}):
            return await saved_servers()

    async def active_slots(self) -> dict[str, int]:
        """Active slots of every global concurrency limit, by limit name (one Prefect call)."""
        async with self._client() as client:
            limits = await client.read_global_concurrency_limits(limit=200)
        return {limit.name: limit.active_slots for limit in limits}

    async def draining_servers(self, *, shared: bool = False) -> frozenset[str]:
        """The servers `comfybatch fleet drain` took out of rotation (one Prefect call; with `shared`, shared for a
        moment between the many clients polling batches); none while Prefect cannot say, since only a mark on the
        page depends on it."""

        async def read() -> frozenset[str]:
            async with self._client() as client:
                return await draining_servers(client)

        try:
            return await (self._shared(("draining",), read) if shared else read())
        except (httpx.HTTPError, ComfyBatchError) as exc:
            logger.warning("draining servers not read: %s", exc)
            return frozenset()

    async def batch_counts(self) -> dict[str, int]:
        """Flow runs of `generate-batch` by state type (one Prefect call; the newest 200 runs)."""
        flow_filter = FlowFilter(name=FlowFilterName(any_=[GENERATE_BATCH.split("/", 1)[0]]))
        async with self._client() as client:
            runs = await client.read_flow_runs(flow_filter=flow_filter, limit=BATCH_COUNT_LIMIT)
        return dict(Counter(run.state_type.value for run in runs if run.state_type))

    def ui_url(self, flow_run_id: UUID) -> str | None:
        """The run's page in the Prefect UI, when the API URL is known."""
        api = self.api_url or PREFECT_API_URL.value()
        return f"{api.removesuffix('/').removesuffix('/api')}/runs/flow-run/{flow_run_id}" if api else None

    def spec_of(self, run: FlowRun) -> BatchSpec:
        """The batch request a run was started with.

        Raises:
            BatchNotFound: the run has no valid `spec` parameter.
        """
        try:
            return BatchSpec.model_validate(run.parameters.get("spec"))
        except ValidationError as exc:
            raise BatchNotFound(f"flow run {run.id} has no readable batch spec") from exc

    def store_of(self, spec: BatchSpec) -> OutputStore:
        """The output store the batch writes into."""
        return OutputStore(spec.output or self.settings.output_root)

    async def ending_message(self, run: FlowRun) -> str | None:
        """Why a batch ended other than COMPLETED. For a cancel, the message of the request itself ("cancelled by
        <key>"): the runner's final Cancelled state carries its own words instead."""
        state = run.state
        if state is None or state.type.value not in TERMINAL_STATES or state.is_completed():
            return None
        if state.type != StateType.CANCELLED or (state.message or "").startswith(CANCELLED_BY):
            return state.message or state.name
        if (known := self._endings.get(state.id)) is not None:
            return known
        async with self._client() as client:
            history = await client.read_flow_run_states(run.id)
        asked = [s.message for s in history if s.message and s.message.startswith(CANCELLED_BY)]
        message = asked[-1] if asked else (state.message or state.name or "cancelled")
        self._endings[state.id] = message  # the history up to this state no longer changes
        return message

    async def check_identity(self, spec: BatchSpec) -> None:
        """Refuse a request the batch's name already holds another request for, before any run is created.

        Raises:
            BatchConflict naming what differs (the flow checks again when it claims the folder).
        """
        store = self.store_of(spec)
        await find_folder(store, spec, await asyncio.to_thread(request_identity, spec))

    async def batch_dir(self, spec: BatchSpec, run_id: UUID | None = None) -> str:
        """The folder the batch's run works in: the name's own, or the version folder a `new_version` run claimed."""
        if not spec.new_version or run_id is None:
            return spec.name
        if (known := self._folders.get(run_id)) is not None:
            return known
        folder = await asyncio.to_thread(run_folder, self.store_of(spec), spec, str(run_id))
        if folder != spec.name:  # claimed: it never changes again (before the claim, ask again next time)
            self._folders[run_id] = folder
        return folder

    async def records(self, spec: BatchSpec, run: FlowRun) -> dict[str, JobRecord]:
        """The batch's job journal as `run` reads it, by item key (empty before the first job was submitted).

        Records read before during the same execution of the run are reused while they cannot change
        (`_unchanging`): polling a big batch reads only new files. A failed or cancelled record an earlier run or
        execution left is read again while this one executes: it renders that item again (a resume, Prefect's Retry,
        a crashed run rescheduled), and a reused copy would hide its new files (every reader, images included).
        """
        execution = (run.id, run.run_count)  # Prefect counts a run's executions: its Retry runs the same run again
        read = self._journals.get(execution)
        since = read.since if read is not None else None
        if since is None and run.state is not None and run.state.type in _EXECUTING:
            since = run.state.timestamp.timestamp()
        known = {} if read is None else {key: record for key, record in read.records.items()
                                         if _unchanging(record, since)}  # fmt: skip
        # Read afresh every time (only unfinished records cost a file read): a page reloaded mid-batch must never see
        # an item older than the events it already showed, so no shared, seconds-old answer here.
        records = await JobJournal(self.store_of(spec), await self.batch_dir(spec, run.id)).load(known)
        self._journals[execution] = _JournalRead(records, since)
        return records

    async def read_file(self, spec: BatchSpec, relpath: str) -> bytes:
        """Bytes of a store file already checked to belong to the batch.

        Raises:
            UnsafePath, StorageError.
        """
        return await asyncio.to_thread(self.store_of(spec).read_bytes, relpath)

    async def exists(self, spec: BatchSpec, relpath: str) -> bool:
        """Whether the store has `relpath`."""
        return await asyncio.to_thread(self.store_of(spec).exists, relpath)
