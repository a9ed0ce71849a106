"""`generate-batch`: the batch flow. One task run per image job, fed through per-server slots."""

import asyncio
import contextlib
import uuid
from collections import deque
from datetime import UTC, datetime

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import (
    acreate_markdown_artifact,
)
from prefect.context import FlowRunContext
from pydantic import JsonValue

from comfybatch.blocks.fleet import background_settled
from comfybatch.comfy.follow import Timeouts
from comfybatch.errors import ConfigError
from comfybatch.flows.ending import Ending, record_ending
from comfybatch.flows.fleet_watch import FleetWatch
from comfybatch.flows.origin import input_policy_of_run
from comfybatch.flows.plan import (
    FleetPlan,
    beside,
    load_and_probe,
    template_classes,
)
from comfybatch.flows.refusal import quiet_user_errors
from comfybatch.flows.reruns import executions_of, refuse_after_crashes
from comfybatch.flows.shards import give_back, plan_shards, render_in_shards
from comfybatch.flows.workers import CancelRequested, Fleet, drain, failed, planned, recoverable, watched
from comfybatch.models import BatchReport, BatchSpec
from comfybatch.notify.webhooks import BatchWebhooks
from comfybatch.outputs.contact_sheet import Thumbnails
from comfybatch.outputs.identity import BatchFolder, claimed, find_folder, remember_request, request_identity
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, write_plan
from comfybatch.run_tags import SUBMITTED_BY, tagged
from comfybatch.settings import Settings, get_settings
from comfybatch.tasks.dispatch import SlotBroker
from comfybatch.tasks.events import continue_numbering, emit_batch_event, emit_item_event
from comfybatch.tasks.first_leases import FirstLeases
from comfybatch.tasks.job import JobContext

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
        stack.push_async_callback(background_settled)  # last out: the fleet's block writes, done beside the batch
        # The first prompts' leases are taken while the fleet is probed and the jobs planned.
        first_leases = await stack.enter_async_context(FirstLeases.configured(settings, only=spec.servers))
        # The claim's settle wait overlaps the fleet's probes.
        classes = template_classes(spec.workflow)  # read once: the probes and the fleet watch ask only for these
        (servers, probes, infos), folder = await beside(
            load_and_probe(settings, only=spec.servers, classes=classes, writes_beside=True),
            stack.enter_async_context(claimed(store, folder, run=run_id or f"local-{uuid.uuid4()}")),
        )
        # Webhooks hear the run's events from here on; leaving waits a few seconds at most for their receivers.
        await stack.enter_async_context(BatchWebhooks.for_run(spec, settings, run_id=run_id, output=store.uri(
            folder.relpath), tags=run.flow_run.tags if run and run.flow_run else ()))  # fmt: skip
        return await _render(spec, settings, store, folder, identity, (servers, probes, infos), run_id, first_leases,
                             classes=classes)  # fmt: skip
    raise AssertionError("unreachable")  # pragma: no cover


async def _dry_run(spec: BatchSpec, settings: Settings, store: OutputStore, batch_dir: str) -> BatchReport:
    fleet = await load_and_probe(settings, only=spec.servers)
    expansion, _, _, plan = await planned(spec, fleet, JobJournal(store, batch_dir), settings)
    await _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates)
    return BatchReport(name=spec.name, dry_run=True, total=len(expansion.jobs), duplicates=expansion.duplicates,
                       output=store.uri(batch_dir), plan=plan.summary_lines())  # fmt: skip


async def _render(
    spec: BatchSpec, settings: Settings, store: OutputStore, folder: BatchFolder, identity: dict[str, JsonValue],
    fleet: Fleet, run_id: str, first_leases: FirstLeases, *, classes: frozenset[str] | None,
) -> BatchReport:  # fmt: skip
    servers, probes, infos = fleet
    batch_dir = folder.relpath
    journal = JobJournal(store, batch_dir)
    expansion, records, stored, plan = await planned(spec, fleet, journal, settings)
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
    invalid = [failed(job, plan.invalid[job.key]) for job in todo if job.key in plan.invalid]
    for result in invalid:
        await journal.finished(result)
    results += invalid
    runnable = deque(job for job in todo if job.key not in plan.invalid)
    shards = await plan_shards(spec, settings, expansion.jobs, runnable, batch_dir=batch_dir, run_id=run_id)
    reachable = [server for server in servers if server.name in infos]
    broker = SlotBroker(reachable, batch=spec.name, priority=spec.priority, run_id=run_id, first_leases=first_leases)
    context = JobContext(
        broker=broker, store=store, journal=journal,
        batch_dir=batch_dir, timeouts=Timeouts(start_timeout_s=settings.start_timeout_s,
                                               idle_timeout_s=settings.idle_timeout_s),
        eligible=plan.eligible, versions={p.name: p.comfyui_version or "" for p in probes},
        recoverable={key: record for key, record in records.items() if recoverable(record)},
        input_policy=input_policy_of_run(settings), warm_routing=settings.warm_routing,
        thumbnails=Thumbnails(expansion.jobs) if not shards else None,
    )  # fmt: skip
    emit_batch_event(spec.name, "started", total=len(expansion.jobs), skipped=len(results), by=_submitted_by())
    ending = Ending(spec, store, batch_dir, expansion.jobs, results, skipped=len(stored), plan=plan,
                    duplicates=expansion.duplicates, journal=journal, thumbnails=context.thumbnails)  # fmt: skip

    finishing: asyncio.Task[BatchReport] | None = None
    try:
        if shards:  # child flow runs on the work pool render; this run follows them and writes the one ending
            await give_back(first_leases)
            await beside(
                watched(render_in_shards(spec, shards, expansion.jobs, journal, results,
                                          attempts=settings.run_attempts), run_id=run_id, batch=spec.name),
                _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates, required=False),
            )  # fmt: skip
        else:
            # The plan artifact is written beside the first jobs: a slow Prefect write must not delay the first prompt.
            watch = FleetWatch(settings, context, expansion.jobs, only=spec.servers, classes=classes)
            async with broker:
                await beside(
                    drain(spec, runnable, context, results, total=len(expansion.jobs), run_id=run_id,
                          settings=settings, watch=watch),
                    _publish_plan(spec, plan, len(expansion.jobs), expansion.duplicates, required=False),
                )  # fmt: skip
                # The record is written while the broker gives its leases and its demand back: those writes may
                # each wait for SQLite's lock while the Prefect server records the batch's last task runs.
                finishing = asyncio.create_task(ending.finish())
    except BaseException as exc:
        if finishing is not None:  # the broker's exit failed: the record is written as an early end instead
            finishing.cancel()
            await asyncio.gather(finishing, return_exceptions=True)
        # Cancelled, stopped or crashed: what exists is recorded before the run goes (never at success only).
        await asyncio.shield(ending.early(exc, run_id=run_id))
        if isinstance(exc, BaseExceptionGroup) and exc.subgroup(CancelRequested) is not None:
            await _await_the_runner()
        raise
    return await (finishing or ending.finish())


async def _await_the_runner() -> None:
    """The record is written; the runner that asked for the cancel stops this process (SIGTERM, then SIGKILL after
    its grace period) and settles the run's state. Without one (an in-process run), end as cancelled."""
    await asyncio.sleep(_RUNNER_KILL_S)
    raise asyncio.CancelledError("cancel requested and no runner stopped this run")


def _submitted_by() -> str | None:
    """Who submitted the run (the API key's name the dashboard tagged it with), for the stream's `batch.started`."""
    run = FlowRunContext.get()
    tags = run.flow_run.tags if run is not None and run.flow_run is not None else []
    return tagged(tags, SUBMITTED_BY)


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
