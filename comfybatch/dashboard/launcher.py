"""The dashboard's only link to Prefect and the output store (the test seam)."""

import asyncio
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any
from uuid import UUID
from weakref import WeakKeyDictionary

from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import OrchestrationResult, SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.events.clients import PrefectEventsClient, get_events_client
from prefect.events.schemas.events import Event, RelatedResource, Resource
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled, Cancelling
from pydantic import ValidationError

from comfybatch.blocks.fleet import saved_servers
from comfybatch.blocks.server import ServerConfig
from comfybatch.dashboard.events import history_filter
from comfybatch.errors import BatchNotFound, ConfigError
from comfybatch.flows.preview import BatchPreview, preview_batch
from comfybatch.models import BatchSpec
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, JobRecord
from comfybatch.settings import Settings

# Same value as `deployments.catalog.GENERATE_BATCH` (a test keeps them equal): the dashboard never imports the
# flow modules themselves, only the planning helpers of `comfybatch.flows`.
GENERATE_BATCH = "generate-batch/generate-batch"
BATCH_COUNT_LIMIT = 200  # the Prefect API's page cap: `/metrics` counts the newest this many batches
ACTIVE_STATES = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
_PREVIEWS_KEPT = 64
_DEPLOYMENT_TTL_S = 30.0  # a re-served deployment gets a new id; within this a request may see the old one


class Launcher:
    """Start, list, read and cancel batches: flow runs of `generate-batch`, outputs in the store."""

    def __init__(self, settings: Settings, *, api_url: str | None = None) -> None:
        self.settings = settings
        self.api_url = api_url
        self._previews: OrderedDict[UUID, BatchPreview] = OrderedDict()
        self._journals: OrderedDict[UUID, dict[str, JobRecord]] = OrderedDict()
        # Between `open()` and `aclose()` (the app's lifespan) one Prefect client serves every request:
        # a new one per request costs a TLS context and a connection. Without a lifespan, one per call.
        self._clients: WeakKeyDictionary[asyncio.AbstractEventLoop, PrefectClient] = WeakKeyDictionary()
        self._keep_client = False
        self._deployment: tuple[float, UUID] | None = None

    def _new_client(self) -> PrefectClient:
        api_url = self.api_url or PREFECT_API_URL.value()
        return PrefectClient(api_url) if api_url else get_client()

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[PrefectClient]:
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

    def open(self) -> None:
        """Keep one Prefect client open per event loop until `aclose()`."""
        self._keep_client = True

    async def aclose(self) -> None:
        """Close this event loop's kept Prefect client."""
        self._keep_client = False
        if (client := self._clients.pop(asyncio.get_running_loop(), None)) is not None:
            await client.__aexit__(None, None, None)

    async def _deployment_id(self, client: PrefectClient) -> UUID:
        if self._deployment is not None and time.monotonic() - self._deployment[0] < _DEPLOYMENT_TTL_S:
            return self._deployment[1]
        try:
            deployment = await client.read_deployment_by_name(GENERATE_BATCH)
        except ObjectNotFound as exc:
            raise ConfigError(f"deployment {GENERATE_BATCH!r} is not served (run `comfybatch serve`)") from exc
        self._deployment = (time.monotonic(), deployment.id)
        return deployment.id

    async def start(self, spec: BatchSpec, idempotency_key: str | None, submitted_by: str) -> FlowRun:
        """Create a flow run of `generate-batch`; the same `idempotency_key` returns the same run.

        Raises:
            ConfigError: the deployment is not served.
        """
        async with self._client() as client:
            run = await client.create_flow_run_from_deployment(
                await self._deployment_id(client),
                parameters={"spec": spec.model_dump(mode="json")},
                # Namespaced by key name, so two clients choosing the same key never share a batch.
                idempotency_key=f"{submitted_by}:{idempotency_key}" if idempotency_key else None,
                tags=["comfybatch", "dashboard", f"submitted-by:{submitted_by}"],
            )
        await self.record(run, "submitted", by=submitted_by)
        return run

    async def list_batches(self, *, state: str | None, name: str | None, limit: int, offset: int) -> list[FlowRun]:
        """Flow runs of `generate-batch`, newest first, filtered by state type and batch name."""
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

        Raises:
            BatchNotFound.
        """
        run = await self.get(flow_run_id)
        async with self._client() as client:
            # A run whose process has not started has nothing to stop: a runner would never move it on
            # from Cancelling. Only a running batch needs the runner to end its process.
            started = run.state is not None and run.state.type == StateType.RUNNING
            message = f"cancelled by {cancelled_by}"
            result: OrchestrationResult[Any] = await client.set_flow_run_state(
                flow_run_id, Cancelling(message=message) if started else Cancelled(message=message)
            )
            if result.status != SetStateStatus.ACCEPT and not started:  # it started meanwhile
                await client.set_flow_run_state(flow_run_id, Cancelling(message=message))
            run = await client.read_flow_run(run.id)
        await self.record(run, "cancel-requested", by=cancelled_by)
        return run

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
        async with PrefectEventsClient(self.api_url) if self.api_url else get_events_client() as events:
            await events.emit(event)

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

    async def preview(self, spec: BatchSpec, run_id: UUID | None = None) -> BatchPreview:
        """The dry run of `spec` (cached per batch run: a run's spec never changes)."""
        if run_id is not None and (cached := self._previews.get(run_id)) is not None:
            return cached
        if self.api_url:
            with temporary_settings({PREFECT_API_URL: self.api_url}):
                preview = await preview_batch(spec, self.settings)
        else:
            preview = await preview_batch(spec, self.settings)
        if run_id is not None:
            self._previews[run_id] = preview
            while len(self._previews) > _PREVIEWS_KEPT:
                self._previews.popitem(last=False)
        return preview

    async def active_batches(self, submitted_by: str) -> list[FlowRun]:
        """Batches of this key that are not finished yet (scheduled, pending, running, paused)."""
        run_filter = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=ACTIVE_STATES)))
        async with self._client() as client:
            deployment_filter = DeploymentFilter(id=DeploymentFilterId(any_=[await self._deployment_id(client)]))
            runs = await client.read_flow_runs(flow_run_filter=run_filter, deployment_filter=deployment_filter,
                                               limit=BATCH_COUNT_LIMIT)  # fmt: skip
        return [run for run in runs if f"submitted-by:{submitted_by}" in run.tags]

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

    async def records(self, spec: BatchSpec, run_id: UUID | None = None) -> dict[str, JobRecord]:
        """The batch's job journal, by item key (empty before the first job was submitted).

        With `run_id`, finished records read before are reused: polling a big batch reads only new files.
        """
        known = self._journals.get(run_id) if run_id is not None else None
        records = await JobJournal(self.store_of(spec), spec.name).load(known)
        if run_id is not None:
            self._journals[run_id] = records
            self._journals.move_to_end(run_id)
            while len(self._journals) > _PREVIEWS_KEPT:
                self._journals.popitem(last=False)
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
