"""The jobs of one flow run (a batch's, or a shard's): planned once around what the journal holds, then run by
workers that keep every slot of the fleet busy, each awaiting one task run at a time, until the queue is empty or
the run is cancelled."""

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Coroutine
from typing import Any, cast

import httpx
from prefect.artifacts import acreate_progress_artifact
from prefect.client.schemas.objects import State

from comfybatch.blocks.server import ServerConfig
from comfybatch.comfy.object_info import ObjectInfo, merge_object_infos
from comfybatch.expansion import Expansion, expand_batch
from comfybatch.flows.fleet_watch import FleetWatch
from comfybatch.flows.origin import input_policy_of_run
from comfybatch.flows.plan import FleetPlan, ServerProbe, plan_fleet, resolve_workflow
from comfybatch.models import BatchSpec, JobResult, JobSpec
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, JobRecord
from comfybatch.settings import Settings
from comfybatch.tasks.events import emit_item_event, emit_run_state
from comfybatch.tasks.group import Granularity, group_name, render_images
from comfybatch.tasks.job import JobContext, retry_delays, run_job
from comfybatch.tasks.leases import LeaseApi

_PROGRESS_EVERY_S = 1.0
_OK, _NO_CONTENT = 200, 204
_PACE_EVERY_S = 1.0
_PACE_STALL_S = 15.0
_CANCEL_POLL_S = 1.0


Fleet = tuple[list[ServerConfig], list[ServerProbe], dict[str, ObjectInfo]]


async def planned(
    spec: BatchSpec, fleet: Fleet, journal: JobJournal, settings: Settings
) -> tuple[Expansion, dict[str, JobRecord], dict[str, JobResult], FleetPlan]:
    """Expand the batch (the journal's read overlapping), and plan it on the fleet around what is already stored."""
    servers, probes, infos = fleet
    loading = asyncio.create_task(journal.load())
    try:
        template = resolve_workflow(spec.workflow, infos)
        expansion = expand_batch(spec, template, object_info=merge_object_infos(infos.values()),
                                 input_policy=input_policy_of_run(settings))  # fmt: skip
    except BaseException:
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        raise
    records = await loading
    stored = await asyncio.to_thread(still_stored, journal.store, records)
    slots = {server.name: server.slots for server in servers if server.name in infos}
    plan = plan_fleet(expansion.jobs, probes, infos, history=list(stored.values()), slots=slots)
    return expansion, records, stored, plan


async def drain(
    spec: BatchSpec, queue: deque[JobSpec], context: JobContext, results: list[JobResult], *, total: int, run_id: str,
    settings: Settings, watch: FleetWatch | None = None,
) -> None:  # fmt: skip
    """Run the queue with enough workers to keep every slot busy; each worker awaits one task at a time. With
    `watch`, servers joining the fleet meanwhile get workers of their own."""
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
            return [await result_of(jobs[0], state)]
        grouped = await cast(Awaitable[State[list[JobResult]]], render_images(
            jobs, context, name=group_name(jobs), retries=settings.job_retries, backoff_s=settings.retry_backoff_s,
            return_state=True))  # fmt: skip
        if grouped.is_completed():
            return await grouped.aresult()
        return [await result_of(job, grouped) for job in jobs]

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


async def watched(work: Coroutine[Any, Any, None], *, run_id: str, batch: str) -> None:
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


async def result_of(job: JobSpec, state: State[Any]) -> JobResult:
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
    return failed(job, message)


def recoverable(record: JobRecord) -> bool:
    """A prompt an earlier run submitted and never saw finish (it may still run, or be done on its server)."""
    stopped = record.result is not None and record.result.status == "cancelled" and record.prompt_id is not None
    return record.state == "submitted" or stopped


def failed(job: JobSpec, error: str) -> JobResult:
    return JobResult(job=job, status="failed", error=error, finished_at=time.time())


def still_stored(store: OutputStore, records: dict[str, JobRecord]) -> dict[str, JobResult]:
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
