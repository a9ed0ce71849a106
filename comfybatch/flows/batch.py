"""`generate-batch`: the batch flow. One task run per image job, fed through per-server slots."""

import asyncio
import contextlib
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Coroutine
from datetime import UTC, datetime
from typing import Any, cast

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
    acreate_progress_artifact,
)
from prefect.client.schemas.objects import State
from prefect.context import FlowRunContext
from pydantic import JsonValue

from comfybatch.blocks.server import ServerConfig
from comfybatch.comfy.follow import Timeouts
from comfybatch.comfy.object_info import ObjectInfo, merge_object_infos
from comfybatch.errors import ConfigError
from comfybatch.expansion import Expansion, expand_batch
from comfybatch.flows.ending import Ending, record_ending
from comfybatch.flows.fleet_watch import FleetWatch
from comfybatch.flows.origin import input_policy_of_run
from comfybatch.flows.plan import (
    FleetPlan,
    ServerProbe,
    beside,
    load_and_probe,
    plan_fleet,
    resolve_workflow,
    template_classes,
)
from comfybatch.flows.refusal import quiet_user_errors
from comfybatch.flows.reruns import executions_of, refuse_after_crashes
from comfybatch.flows.shards import give_back, plan_shards, render_in_shards
from comfybatch.models import BatchReport, BatchSpec, JobResult, JobSpec
from comfybatch.notify.webhooks import BatchWebhooks
from comfybatch.outputs.identity import BatchFolder, claimed, find_folder, remember_request, request_identity
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, JobRecord, write_plan
from comfybatch.settings import Settings, get_settings
from comfybatch.tasks.dispatch import SlotBroker
from comfybatch.tasks.events import continue_numbering, emit_batch_event, emit_item_event, emit_run_state
from comfybatch.tasks.first_leases import FirstLeases
from comfybatch.tasks.group import Granularity, group_name, render_images
from comfybatch.tasks.job import JobContext, retry_delays, run_job
from comfybatch.tasks.leases import LeaseApi

_PROGRESS_EVERY_S = 1.0
_OK, _NO_CONTENT = 200, 204
_PACE_EVERY_S = 1.0
_PACE_STALL_S = 15.0
_CANCEL_POLL_S = 1.0
_RUNNER_KILL_S = 60.0  # longer than the runner's grace period (30 s) between SIGTERM and SIGKILL


# The hooks write the record in the process that saw the run end (Prefect's runner), also when this one was killed.
@flow(name="generate-batch", flow_run_name="{spec.name}", log_prints=False, on_cancellation=[record_ending],
      on_crashed=[record_ending])  # fmt: skip
async def generate_batch(spec: BatchSpec) -> BatchReport:
    """Render every job of `spec` on the fleet; rerunning the same batch skips what is already stored.

    Raises:
        BatchRequestError / WorkflowError before any GPU time, ConfigError for an unusable fleet,
        BatchIncomplete (after writing the manifest) when some jobs failed.
    """
    quiet_user_errors()  # a refusal shows in the Prefect UI as its sentence, not a traceback
    settings = get_settings()
    store = OutputStore(spec.output or settings.output_root)
    run = FlowRunContext.get()
    run_id = str(run.flow_run.id) if run and run.flow_run else ""
    if run is not None and run.flow_run is not None:  # rescheduled after a crash (deploy/rerun-crashed.yaml)?
        executions = await executions_of(run_id)
        await refuse_after_crashes(run.flow_run, executions=executions, attempts=settings.run_attempts)
        if executions > 1:  # the earlier execution's events are stored: the stream numbers on after them
            await continue_numbering(run.flow_run.id, run.flow_run.created or datetime.now(UTC))
    # Identity first: a request that another one already holds this name for is refused before any probe.
    identity = await asyncio.to_thread(request_identity, spec)
    folder = await find_folder(store, spec, identity)
    if spec.dry_run:
        return await _dry_run(spec, settings, store, folder.relpath)
    async with contextlib.AsyncExitStack() as stack:
        # The first prompts' leases are taken while the fleet is probed and the jobs planned.
        first_leases = await stack.enter_async_context(FirstLeases.configured(settings, only=spec.servers))
        # The claim's settle wait overlaps the fleet's probes.
        (servers, probes, infos), folder = await beside(
            load_and_probe(settings, only=spec.servers, classes=template_classes(spec.workflow)),
            stack.enter_async_context(claimed(store, folder, run=run_id or f"local-{uuid.uuid4()}")),
        )
        # Webhooks hear the run's events from here on; leaving waits a few seconds at most for their receivers.
        await stack.enter_async_context(BatchWebhooks.for_run(spec, settings, run_id=run_id, output=store.uri(
            folder.relpath), tags=run.flow_run.tags if run and run.flow_run else ()))  # fmt: skip
        return await _render(spec, settings, store, folder, identity, (servers, probes, infos), run_id, first_leases)
    raise AssertionError("unreachable")  # pragma: no cover


async def _dry_run(spec: BatchSpec, settings: Settings, store: OutputStore, batch_dir: str) -> BatchReport:
    fleet = await load_and_probe(settings, only=spec.servers)
    expansion, _, _, plan = await _planned(spec, fleet, JobJournal(store, batch_dir))
    await _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates)
    return BatchReport(name=spec.name, dry_run=True, total=len(expansion.jobs), duplicates=expansion.duplicates,
                       output=store.uri(batch_dir), plan=plan.summary_lines())  # fmt: skip


_Fleet = tuple[list[ServerConfig], list[ServerProbe], dict[str, ObjectInfo]]


async def _planned(
    spec: BatchSpec, fleet: _Fleet, journal: JobJournal
) -> tuple[Expansion, dict[str, JobRecord], dict[str, JobResult], FleetPlan]:
    """Expand the batch (the journal's read overlapping), and plan it on the fleet around what is already stored."""
    servers, probes, infos = fleet
    loading = asyncio.create_task(journal.load())
    try:
        template = resolve_workflow(spec.workflow, infos)
        expansion = expand_batch(spec, template, object_info=merge_object_infos(infos.values()),
                                 input_policy=input_policy_of_run(get_settings()))  # fmt: skip
    except BaseException:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        raise
    records = await loading
    stored = await asyncio.to_thread(_still_stored, journal.store, records)
    slots = {server.name: server.slots for server in servers if server.name in infos}
    plan = plan_fleet(expansion.jobs, probes, infos, history=list(stored.values()), slots=slots)
    return expansion, records, stored, plan


async def _render(
    spec: BatchSpec, settings: Settings, store: OutputStore, folder: BatchFolder, identity: dict[str, JsonValue],
    fleet: _Fleet, run_id: str, first_leases: FirstLeases,
) -> BatchReport:  # fmt: skip
    servers, probes, infos = fleet
    batch_dir = folder.relpath
    journal = JobJournal(store, batch_dir)
    expansion, records, stored, plan = await _planned(spec, fleet, journal)
    if expansion.jobs and plan.runnable == 0:
        await _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates)
        raise ConfigError("no server can run any job of this batch:\n" + "\n".join(plan.summary_lines()))
    # Both before the first prompt (the ending hooks read the plan), side by side.
    await asyncio.gather(remember_request(store, folder, identity),
                         asyncio.to_thread(write_plan, store, batch_dir, expansion.jobs, plan.eligible))  # fmt: skip

    results = [stored[job.key] for job in expansion.jobs if job.key in stored]
    for result in results:
        emit_item_event(result.job, "skipped", files=[file.uri for file in result.files])
    todo = [job for job in expansion.jobs if job.key not in stored]
    invalid = [_failed(job, plan.invalid[job.key]) for job in todo if job.key in plan.invalid]
    for result in invalid:
        await journal.finished(result)
    results += invalid
    runnable = deque(job for job in todo if job.key not in plan.invalid)
    reachable = [server for server in servers if server.name in infos]
    broker = SlotBroker(reachable, batch=spec.name, priority=spec.priority, run_id=run_id, first_leases=first_leases)
    context = JobContext(
        broker=broker, store=store, journal=journal,
        batch_dir=batch_dir, timeouts=Timeouts(start_timeout_s=settings.start_timeout_s,
                                               idle_timeout_s=settings.idle_timeout_s),
        eligible=plan.eligible, versions={p.name: p.comfyui_version or "" for p in probes},
        recoverable={key: record for key, record in records.items() if _recoverable(record)},
    )  # fmt: skip
    emit_batch_event(spec.name, "started", total=len(expansion.jobs), skipped=len(results), by=_submitted_by())
    ending = Ending(spec, store, batch_dir, expansion.jobs, results, skipped=len(stored), plan=plan,
                    duplicates=expansion.duplicates, journal=journal)  # fmt: skip
    shards = await plan_shards(spec, settings, expansion.jobs, runnable, batch_dir=batch_dir, run_id=run_id)
    try:
        if shards:  # child flow runs on the work pool render; this run follows them and writes the one ending
            await give_back(first_leases)
            await beside(
                _watched(render_in_shards(spec, shards, expansion.jobs, journal, results,
                                          attempts=settings.run_attempts), run_id=run_id, batch=spec.name),
                _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates, required=False),
            )  # fmt: skip
        else:
            # The plan artifact is written beside the first jobs: a slow Prefect write must not delay the first prompt.
            watch = FleetWatch(settings, context, expansion.jobs, only=spec.servers,
                               classes=template_classes(spec.workflow))  # fmt: skip
            async with broker:
                await beside(
                    _drain(spec, runnable, context, results, total=len(expansion.jobs), run_id=run_id, watch=watch),
                    _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates, required=False),
                )  # fmt: skip
    except BaseException as exc:
        # Cancelled, stopped or crashed: what exists is recorded before the run goes (never at success only).
        await asyncio.shield(ending.early(exc, run_id=run_id))
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(CancelRequested) is not None:
            await _await_the_runner()
        raise
    return await ending.finish()


async def _await_the_runner() -> None:
    """The record is written; the runner that asked for the cancel stops this process (SIGTERM, then SIGKILL after
    its grace period) and settles the run's state. Without one (an in-process run), end as cancelled."""
    await asyncio.sleep(_RUNNER_KILL_S)
    raise asyncio.CancelledError("cancel requested and no runner stopped this run")


async def _drain(
    spec: BatchSpec, queue: deque[JobSpec], context: JobContext, results: list[JobResult], *, total: int, run_id: str,
    watch: FleetWatch | None = None,
) -> None:  # fmt: skip
    """Run the queue with enough workers to keep every slot busy; each worker awaits one task at a time. With
    `watch`, servers joining the fleet meanwhile get workers of their own."""
    settings = get_settings()
    # No task tags: Prefect takes a `tag:<tag>` concurrency lease (a write on its server) around every tagged
    # task run, and on SQLite a "database is locked" 503 there makes its client sleep 2 s or more with a free
    # GPU. The flow run (named after the batch) already groups the task runs.
    job_task = run_job.with_options(
        retries=settings.job_retries, retry_delay_seconds=retry_delays(settings.job_retries, settings.retry_backoff_s),
    )  # fmt: skip
    pacer = _RecorderPacer(run_id, limit=settings.max_unrecorded_task_runs)
    granularity = Granularity(settings.task_runs_per_s)

    async def worker() -> None:
        while queue:
            await pacer.open.wait()
            if not queue:
                return
            jobs = [context.next_job(queue) for _ in range(min(granularity.size(), len(queue)))]
            if not queue:
                context.broker.last_jobs()
            pacer.started += 1
            for result in await _run_task(jobs):
                if result.status == "failed":
                    await context.journal.finished(result)  # the record knows it failed, and why
                results.append(result)
            granularity.finished(len(jobs))

    async def _run_task(jobs: list[JobSpec]) -> list[JobResult]:
        """One task run: the image's own, or (above what Prefect records per second) a group's."""
        # An async task called from an async flow returns an awaitable, whatever the overloads say.
        if len(jobs) == 1:
            state = await cast(Awaitable[State[JobResult]], job_task(jobs[0], context, return_state=True))
            return [await _result_of(jobs[0], state)]
        grouped = await cast(Awaitable[State[list[JobResult]]], render_images(
            jobs, context, name=group_name(jobs), retries=settings.job_retries, backoff_s=settings.retry_backoff_s,
            return_state=True))  # fmt: skip
        if grouped.is_completed():
            return await grouped.aresult()
        return [await _result_of(job, grouped) for job in jobs]

    # Extra workers beyond the slot count wait in the broker, so a retry's back-off never idles a server.
    workers = min(len(queue), sum(s.slots for s in context.broker.servers.values()) + len(context.broker.servers))
    drained = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(_report_progress(spec, results, drained, total=total))
        watchers = [group.create_task(pacer.run(drained)),
                    group.create_task(_watch_for_cancel(run_id, drained, batch=spec.name))]  # fmt: skip
        async with asyncio.TaskGroup() as jobs:
            for _ in range(workers):
                jobs.create_task(worker())
            if watch is not None:

                def grow(more: int) -> None:
                    for _ in range(min(more, len(queue))):
                        jobs.create_task(worker())

                watchers.append(group.create_task(watch.run(drained, grow)))
        drained.set()
        for watcher in watchers:  # they only read: a request of theirs still out is dropped, not waited for
            watcher.cancel()


def _submitted_by() -> str | None:
    """Who submitted the run (the API key's name the dashboard tagged it with), for the stream's `batch.started`."""
    run = FlowRunContext.get()
    tags = run.flow_run.tags if run is not None and run.flow_run is not None else []
    return next((tag.removeprefix("submitted-by:") for tag in tags if tag.startswith("submitted-by:")), None)


async def _watched(work: Coroutine[Any, Any, None], *, run_id: str, batch: str) -> None:
    """`work` stopped as soon as the run is Cancelling (the runner's SIGTERM alone can be lost, see
    `_watch_for_cancel`): following shards, the batch's run must still cancel them at once."""
    done = asyncio.Event()

    async def run() -> None:
        try:
            await work
        finally:
            done.set()

    async with asyncio.TaskGroup() as group:
        group.create_task(_watch_for_cancel(run_id, done, batch=batch))
        group.create_task(run())


class CancelRequested(Exception):
    """Internal: the run's own state says Cancelling; its jobs stop now, whatever became of the runner's signal."""


async def _watch_for_cancel(run_id: str, drained: asyncio.Event, *, batch: str) -> None:
    """Stop the jobs as soon as the run is Cancelling. The runner's SIGTERM alone can be lost (Prefect raises it
    from a signal handler, and asyncio swallows an exception raised inside one of its network callbacks); then
    the batch would keep rendering through the runner's grace period."""
    if not run_id:
        return
    async with LeaseApi() as api:
        while not drained.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), _CANCEL_POLL_S)
            try:
                state = (await api.send("GET", f"/flow_runs/{run_id}", accept=(_OK,))).json().get("state") or {}
            except httpx.HTTPError:
                continue  # monitoring never stops the batch
            if state.get("type") in ("CANCELLING", "CANCELLED"):
                message = state.get("message") or "cancelled"
                emit_run_state(batch, "CANCELLING", "Cancelling", message=message)  # the stream's badge, numbered
                raise CancelRequested(message)


class _RecorderPacer:
    """Holds back new jobs while the Prefect server lags behind in recording this flow run's task runs.

    The server records task runs (and stores events) from an in-memory queue that drops messages
    beyond 10,000; GPUs that finish faster than it records (SQLite: some 50 task runs/s) would
    otherwise leave task runs and events missing for good. A read of the recorded count every
    second; jobs resume once the lag is down to half the limit.
    """

    def __init__(self, run_id: str, *, limit: int) -> None:
        self.run_id, self.limit = run_id, limit
        self.started = 0
        self.open = asyncio.Event()
        self.open.set()

    async def run(self, drained: asyncio.Event) -> None:
        if not self.run_id or self.limit <= 0:
            return
        last_recorded, moved_at = 0, time.monotonic()
        async with LeaseApi() as api:
            while not drained.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(drained.wait(), _PACE_EVERY_S)
                if self.started < self.limit // 2:
                    continue
                try:
                    body = {"flow_runs": {"id": {"any_": [self.run_id]}}}
                    recorded = int((await api.send("POST", "/task_runs/count", body, accept=(_OK,))).json())
                except httpx.HTTPError:
                    self.open.set()  # monitoring must never stall the batch
                    continue
                if recorded > last_recorded:
                    last_recorded, moved_at = recorded, time.monotonic()
                lag = self.started - recorded
                if lag <= self.limit // 2 or time.monotonic() - moved_at > _PACE_STALL_S:
                    self.open.set()  # caught up, or not recording at all (then waiting would only idle the GPUs)
                elif lag > self.limit:
                    self.open.clear()
        self.open.set()


async def _report_progress(spec: BatchSpec, results: list[JobResult], drained: asyncio.Event, *, total: int) -> None:
    """Keep the progress artifact current from beside the workers: a slow Prefect write never holds up a job."""
    progress_id = await acreate_progress_artifact(progress=100.0 * len(results) / max(total, 1),
                                                  description=f"{spec.name}: images finished")  # fmt: skip
    reported = len(results)
    async with LeaseApi() as api:  # fast 503 retries: the last update must not hold up the batch's return
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(drained.wait(), _PROGRESS_EVERY_S)
            if len(results) != reported:
                reported = len(results)
                body = {"data": 100.0 * reported / max(total, 1)}
                await api.send("PATCH", f"/artifacts/{progress_id}", body, accept=(_NO_CONTENT,))
            if drained.is_set():
                return


async def _result_of(job: JobSpec, state: State[Any]) -> JobResult:
    """The job's result from its task run's final state (a group's state stands for each of its jobs)."""
    if state.is_completed():
        result: JobResult = await state.aresult()
        return result
    if state.is_crashed() or state.is_cancelled():
        # The run is ending under it (a cancel, the runner's SIGTERM): not the image's failure. Its journal record
        # stays "submitted", so a rerun adopts the prompt by its id or renders it anew.
        return JobResult(job=job, status="cancelled", error=state.message or "cancelled", finished_at=time.time())
    outcome = await state.aresult(raise_on_failure=False)
    message = str(outcome) if isinstance(outcome, BaseException) else (state.message or state.name or "failed")
    return _failed_with_event(job, message)


def _failed_with_event(job: JobSpec, message: str) -> JobResult:
    emit_item_event(job, "failed", error=message)
    return _failed(job, message)


def _recoverable(record: JobRecord) -> bool:
    """A prompt an earlier run submitted and never saw finish (it may still run, or be done on its server)."""
    stopped = record.result is not None and record.result.status == "cancelled" and record.prompt_id is not None
    return record.state == "submitted" or stopped


def _failed(job: JobSpec, error: str) -> JobResult:
    return JobResult(job=job, status="failed", error=error, finished_at=time.time())


def _still_stored(store: OutputStore, records: dict[str, JobRecord]) -> dict[str, JobResult]:
    """Finished jobs whose every file is still in storage (deleted outputs are rendered again)."""
    done: dict[str, JobResult] = {}
    for key, record in records.items():
        result = record.result
        if record.state != "finished" or result is None or result.status != "done" or not result.files:
            continue
        relpaths = [store.relpath_of(file.uri) for file in result.files]
        if all(relpath is not None and store.exists(relpath) for relpath in relpaths):
            done[key] = result
    return done


async def _publish_plan(spec: BatchSpec, plan: FleetPlan, jobs: int, duplicates: int, *, required: bool = True) -> None:
    title = "Dry run" if spec.dry_run else "Plan"
    lines = [
        f"# {title}: {spec.name}",
        "",
        f"{jobs} job(s), {duplicates} duplicate(s) dropped.",
        "",
        *plan.summary_lines(),
    ]
    try:
        await acreate_markdown_artifact(
            markdown="\n".join(lines), key=f"{spec.name}-plan", description=f"{title} of {spec.name}"
        )
    except httpx.HTTPError as exc:
        if required:
            raise
        get_run_logger().warning("plan artifact not written: %r", exc)  # the batch itself is unaffected
    get_run_logger().info("%s: %s job(s); %s", spec.name, jobs, " ".join(plan.summary_lines()))
