"""Shards: a large batch as child flow runs of `render-shard` on the work pool, started, followed and (when their
worker died) started again by the batch's own run, which keeps the plan, the folder claim and the one ending.

The parent claims the batch folder; its shards work under that claim (they check it names their parent) and append
to the same journal, each job to its own record, so a shard that runs again resumes from it.
"""

import asyncio
import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from uuid import UUID

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterTags
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import FlowRunContext
from prefect.deployments import arun_deployment
from prefect.exceptions import ObjectNotFound
from prefect.states import Cancelled, Cancelling
from pydantic import BaseModel, ConfigDict, Field

from comfybatch.flows.ending import cancel_task_runs
from comfybatch.flows.relay import JournalRelay
from comfybatch.flows.reruns import executions_of
from comfybatch.models import BatchSpec, JobResult, JobSpec
from comfybatch.records import JobJournal
from comfybatch.settings import Settings
from comfybatch.tasks.events import emit_batch_event
from comfybatch.tasks.first_leases import FirstLeases

SHARD_DEPLOYMENT = "render-shard/render-shard"
SHARD_TAG = "comfybatch-shard"
_FOLLOW_S = 2.0
_WAITING_WARN_S = 300.0
_STOP_WAIT_S = 60.0  # longer than a worker's grace between SIGTERM and SIGKILL (30 s)
_FINAL = (StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED)


class ShardSpec(BaseModel):
    """One shard of a batch: the jobs at plan positions `start` to `stop` that are not stored yet."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    number: int = Field(ge=1, description="1-based, of `count`.")
    count: int = Field(ge=1)
    start: int = Field(ge=0, description="First plan position (0-based) of the shard.")
    stop: int = Field(ge=1, description="One past its last plan position.")
    batch_dir: str = Field(description="The batch folder its parent claimed, relative to the output store.")
    parent_run: str = Field(description="The flow run of the batch: the folder's owner, which the shard works for.")
    attempt: int = Field(1, ge=1, description="1 for the first run; a crashed shard runs again with the next.")
    parent_execution: int = Field(1, ge=1, description="Which execution of the parent run started it (a parent that "
                                  "crashed runs again, and starts its shards anew).")  # fmt: skip

    @property
    def label(self) -> str:
        return f"shard {self.number}/{self.count}"

    def run_name(self, batch: str) -> str:
        suffix = f"-attempt-{self.attempt}" if self.attempt > 1 else ""
        return f"{batch}-shard-{self.number}-of-{self.count}{suffix}"


def split(positions: Sequence[int], size: int, *, batch_dir: str, parent_run: str,
          parent_execution: int = 1) -> list[ShardSpec]:  # fmt: skip
    """Shards of at most `size` jobs over the plan positions still to render (ascending), as even as can be."""
    if not positions:
        return []
    count = math.ceil(len(positions) / size)
    bounds = [round(index * len(positions) / count) for index in range(count + 1)]
    return [
        ShardSpec(number=number + 1, count=count, start=positions[bounds[number]],
                  stop=positions[bounds[number + 1] - 1] + 1, batch_dir=batch_dir, parent_run=parent_run,
                  parent_execution=parent_execution)
        for number in range(count)
    ]  # fmt: skip


async def plan_shards(
    spec: BatchSpec, settings: Settings, jobs: Sequence[JobSpec], runnable: Sequence[JobSpec], *, batch_dir: str,
    run_id: str,
) -> list[ShardSpec]:  # fmt: skip
    """The shards of this run, or none when it renders in its own process: few jobs to render, not started from a
    deployment (no work pool to send shards to), or no `render-shard` deployment."""
    size = spec.shard_size or settings.shard_size
    run = FlowRunContext.get()
    if len(runnable) <= size or not run_id or run is None or run.flow_run is None or not run.flow_run.deployment_id:
        return []
    try:
        async with get_client() as client:
            await client.read_deployment_by_name(SHARD_DEPLOYMENT)
    except ObjectNotFound:
        get_run_logger().warning("%s: no %s deployment; rendering %d jobs in this one run", spec.name,
                                 SHARD_DEPLOYMENT, len(runnable))  # fmt: skip
        return []
    position = {job.key: index for index, job in enumerate(jobs)}
    return split(sorted(position[job.key] for job in runnable), size, batch_dir=batch_dir, parent_run=run_id,
                 parent_execution=await executions_of(run_id))  # fmt: skip


async def give_back(first_leases: FirstLeases) -> None:
    """Release the leases taken for this process's first prompts: in shards, other processes render."""
    for lease_id in (await first_leases.handed()).values():
        with contextlib.suppress(httpx.HTTPError):  # else it expires by itself
            await first_leases.api.release(lease_id)


@dataclass
class _Running:
    shard: ShardSpec
    flow_run_id: UUID
    started_at: float
    warned: bool = False


async def render_in_shards(
    spec: BatchSpec, shards: Sequence[ShardSpec], jobs: Sequence[JobSpec], journal: JobJournal,
    results: list[JobResult], *, attempts: int,
) -> None:  # fmt: skip
    """Start every shard, follow them to their ends (a crashed one runs again, up to `attempts` runs), then add each
    job's result from the journal to `results`; a job no shard rendered is failed (or cancelled) naming its shard.

    On the way out early (the batch cancelled or stopped), the shards still running are cancelled too.
    """
    running: dict[int, _Running] = {}
    ended: dict[int, FlowRun] = {}
    relay = JournalRelay(journal, jobs)  # the shards' images in this run's own stream
    await relay.start()
    async with get_client() as client:
        try:
            if shards[0].parent_execution > 1:  # the parent crashed and runs again: its earlier shards stop first
                await _stop_earlier(client, shards[0].parent_run)
            for shard in shards:
                running[shard.number] = await _start(client, spec, shard)
            while running:
                await asyncio.sleep(_FOLLOW_S)
                await relay.relay()
                for run in await _read_runs(client, [entry.flow_run_id for entry in running.values()]):
                    entry = next(e for e in running.values() if e.flow_run_id == run.id)
                    if run.state is None or run.state.type not in _FINAL:
                        _warn_if_waiting(spec, entry, run)
                        continue
                    del running[entry.shard.number]
                    if run.state.type == StateType.CRASHED and entry.shard.attempt < attempts:
                        again = await _restart(client, spec, entry.shard, run, attempts=attempts)
                        running[again.shard.number] = again
                    else:
                        ended[entry.shard.number] = run
        except BaseException:
            await asyncio.shield(cancel_shards(client, [entry.flow_run_id for entry in running.values()]))
            raise
    await relay.relay()  # the last images, before the batch's end is told
    await _collect(shards, ended, jobs, journal, results)


def _warn_if_waiting(spec: BatchSpec, entry: _Running, run: FlowRun) -> None:
    """Say once when a shard waits long for a worker: batch runs may hold every worker slot (each takes one while its
    shards wait for theirs), so `--limit` must exceed the number of batches run at once."""
    waited = time.monotonic() - entry.started_at
    if entry.warned or waited < _WAITING_WARN_S or run.state is None or run.state.type != StateType.SCHEDULED:
        return
    entry.warned = True
    get_run_logger().warning("%s of %s has waited %.0f s for a worker: are all worker slots taken by batch runs? "
                             "Raise the workers' --limit or start another worker", entry.shard.label, spec.name,
                             waited)  # fmt: skip


async def _restart(client: PrefectClient, spec: BatchSpec, shard: ShardSpec, crashed: FlowRun, *,
                   attempts: int) -> _Running:  # fmt: skip
    """Run a crashed shard again (its worker died): a new child flow run, so each attempt shows in Prefect."""
    again = shard.model_copy(update={"attempt": shard.attempt + 1})
    message = crashed.state.message if crashed.state is not None and crashed.state.message else "no message"
    get_run_logger().warning("%s of %s crashed (%s); running it again, attempt %d of %d", shard.label, spec.name,
                             message, again.attempt, attempts)  # fmt: skip
    emit_batch_event(spec.name, "shard-restarted", shard=shard.number, attempt=again.attempt,
                     crashed_run=str(crashed.id))  # fmt: skip
    with contextlib.suppress(Exception):  # cosmetic: its dead process left its task runs Running in the UI
        await cancel_task_runs(str(crashed.id), f"{shard.label} crashed; its jobs run again in attempt {again.attempt}")
    return await _start(client, spec, again)


async def _start(client: PrefectClient, spec: BatchSpec, shard: ShardSpec) -> _Running:
    run = await arun_deployment(
        SHARD_DEPLOYMENT, client=client, timeout=0, flow_run_name=shard.run_name(spec.name),
        tags=[SHARD_TAG, _parent_tag(shard.parent_run)],
        parameters={"spec": spec.model_dump(mode="json"), "shard": shard.model_dump(mode="json")},
        # A parent process retrying the request never starts one shard twice.
        idempotency_key=f"{shard.parent_run}-{shard.parent_execution}-shard-{shard.number}-attempt-{shard.attempt}",
    )  # fmt: skip
    return _Running(shard, run.id, time.monotonic())


def _parent_tag(parent_run: str) -> str:
    return f"comfybatch-parent:{parent_run}"


async def _stop_earlier(client: PrefectClient, parent_run: str) -> None:
    """Cancel the shards an earlier execution of the parent started and that still go, and wait for them to end: two
    runs of one shard at once would render its jobs twice. A shard whose worker died with the parent never ends by
    itself; it is set Cancelled after `_STOP_WAIT_S`."""
    ids = [run.id for run in await client.read_flow_runs(flow_run_filter=FlowRunFilter(
        tags=FlowRunFilterTags(all_=[_parent_tag(parent_run)])))
        if run.state is not None and run.state.type not in _FINAL]  # fmt: skip
    if not ids:
        return
    get_run_logger().warning("%d shard run(s) of an earlier execution still going; cancelling them first", len(ids))
    await cancel_shards(client, ids)
    deadline = time.monotonic() + _STOP_WAIT_S
    while ids and time.monotonic() < deadline:
        await asyncio.sleep(_FOLLOW_S)
        ids = [run.id for run in await _read_runs(client, ids) if run.state is None or run.state.type not in _FINAL]
    for flow_run_id in ids:
        await client.set_flow_run_state(flow_run_id, Cancelled(message="its batch's run started it anew"), force=True)


async def _read_runs(client: PrefectClient, ids: list[UUID]) -> list[FlowRun]:
    try:
        return await client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    except httpx.HTTPError as exc:
        get_run_logger().warning("shard states not read (%r); trying again", exc)  # following never fails the batch
        return []


async def cancel_shards(client: PrefectClient, flow_run_ids: Sequence[UUID]) -> None:
    """Ask the workers to stop the shards still going (their runs' states say Cancelling); one not started yet is
    Cancelled at once. Never forced: a shard that ended meanwhile keeps its state (Prefect refuses Cancelling after
    a final state; forced, a Completed shard became Cancelling for good, with no process left to end it)."""
    known = {run.id: run for run in await _read_runs(client, list(flow_run_ids))}
    for flow_run_id in flow_run_ids:
        state = known[flow_run_id].state if flow_run_id in known else None
        if state is not None and state.type in _FINAL:
            continue
        stop = Cancelled if state is not None and state.type == StateType.SCHEDULED else Cancelling
        with contextlib.suppress(Exception):  # best effort: Prefect's cancellation cleanup cancels subflows too
            await client.set_flow_run_state(flow_run_id, stop(message="the batch's run ended"))


async def _collect(
    shards: Sequence[ShardSpec], ended: dict[int, FlowRun], jobs: Sequence[JobSpec], journal: JobJournal,
    results: list[JobResult],
) -> None:  # fmt: skip
    records = await journal.load()
    finished = {result.job.key for result in results}
    for shard in shards:
        run = ended.get(shard.number)
        state = run.state if run is not None else None
        cancelled = state is not None and state.type == StateType.CANCELLED
        why = f"{shard.label} ended {state.name if state else 'unknown'}" + (f": {state.message}" if state and
                                                                                state.message else "")  # fmt: skip
        for job in jobs[shard.start : shard.stop]:
            if job.key in finished:
                continue
            record = records.get(job.key)
            if record is not None and record.result is not None:
                results.append(record.result)
            else:
                results.append(JobResult(job=job, status="cancelled" if cancelled else "failed",
                                         error=f"{why}; not rendered", finished_at=time.time()))  # fmt: skip
