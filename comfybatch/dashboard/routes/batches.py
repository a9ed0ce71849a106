"""`/api/batches`: create, list, read, page items, download the manifest, cancel; `/api/validate`."""

import asyncio
import logging
import math
import time
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal, cast
from uuid import UUID

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response, status
from prefect.client.schemas.objects import FlowRun

from comfybatch.dashboard.deps import HubDep, KeyName, LauncherDep, SettingsDep
from comfybatch.dashboard.events import EventHub
from comfybatch.dashboard.launcher import CANCELLED_BY, Launcher, this_run
from comfybatch.dashboard.requests import check_api_request
from comfybatch.dashboard.schemas import (
    TERMINAL_STATES,
    BatchCounts,
    BatchLinks,
    BatchList,
    BatchStarted,
    BatchStatus,
    BatchSummary,
    ItemFailure,
    ItemList,
    ItemStatus,
    ServerProgress,
    ValidationReport,
)
from comfybatch.dashboard.usage import check_daily_quota
from comfybatch.errors import BatchConflict, BatchNotFound, ComfyBatchError
from comfybatch.flows.plan import estimate_run_s
from comfybatch.models import BatchSpec, JobSpec
from comfybatch.notify.webhooks import check_webhook
from comfybatch.outputs.manifest import media_type_of
from comfybatch.records import JobRecord
from comfybatch.run_tags import RESUMED_FROM, SUBMITTED_BY, tagged

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/api", tags=["batches"])
_MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}
_FAILURES_SHOWN = 20
_SETTLE_AFTER = timedelta(seconds=30)  # beyond the ending hooks' writes (cancel, crash) after the run's end
_INVALID_SHOWN = 50


def _links(request: Request, run: FlowRun, launcher: LauncherDep) -> BatchLinks:
    base = f"/api/batches/{run.id}"
    return BatchLinks(self=base, items=f"{base}/items", manifest=f"{base}/manifest", events=f"{base}/events",
                      prefect_ui=launcher.ui_url(run.id))  # fmt: skip


def _state(run: FlowRun) -> tuple[str, str]:
    return (run.state_type.value if run.state_type else "UNKNOWN", run.state_name or "")


def _item_state(record: JobRecord | None, *, ended: bool) -> str:
    """The item's state from its journal record; once the run has ended, what never finished was not rendered."""
    state = "queued" if record is None else (record.result.status if record.result else "submitted")
    return "cancelled" if ended and state in ("queued", "submitted") else state


def _ended(run: FlowRun) -> bool:
    return run.state_type is not None and run.state_type.value in TERMINAL_STATES


def requested_total(spec: BatchSpec) -> int | None:
    """The batch's job count read from the request alone when that is exact, else None.

    Exact for distinct prompts of a template (each prompt binds, so no two jobs share a graph) without a sheet
    or sweep; a sheet's rows, sweeps and custom graphs need the expansion the flow stores in its plan.
    """
    if spec.sheet is not None or spec.sweep.axes or spec.sweep.zipped or not isinstance(spec.workflow, str):
        return None
    if len(set(spec.prompts)) != len(spec.prompts):
        return None
    return max(len(spec.prompts), 1) * spec.images_per_item


def requested_bound(spec: BatchSpec) -> int | None:
    """At most this many jobs, from the request alone (duplicates not removed); None for a sheet."""
    if spec.sheet is not None:
        return None
    points = math.prod(len(values) for values in spec.sweep.axes.values())
    points *= math.prod(len(next(iter(group.values()), [])) for group in spec.sweep.zipped)
    return max(len(spec.prompts), 1) * points * spec.images_per_item


async def _queued_images(launcher: Launcher, key_name: str) -> int:
    """Images of this key's unfinished batches that have not finished yet: from each one's stored plan and journal
    (before the plan is written, the request's bound; for a sheet not yet planned, what its journal holds)."""
    queued = 0
    for run in await launcher.active_batches(key_name):
        spec = launcher.spec_of(run)
        jobs = await launcher.plan(spec, run.id)
        records = await launcher.records(spec, run)
        finished = sum(1 for record in records.values() if record.result is not None)
        total = len(jobs) if jobs is not None else requested_bound(spec)
        queued += max((total if total is not None else len(records)) - finished, 0)
    return queued


async def _check_quota(launcher: Launcher, quota: int, key_name: str, adds: int, what: str) -> None:
    queued = await _queued_images(launcher, key_name)
    if queued + adds > quota:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"key {key_name!r} has {queued} image(s) queued and {what} adds {adds}: over its quota of "
            f"{quota}; wait for a batch to finish or split this one",
        )


@router.post("/validate")
async def validate_batch(
    spec: BatchSpec, launcher: LauncherDep, hub: HubDep, settings: SettingsDep, _key: KeyName
) -> ValidationReport:
    """The fleet dry run of a request: expand it and check every job on every server; renders nothing."""
    check_api_request(spec, settings)
    await check_webhook(spec, settings)  # 422 naming `webhook`: internal addresses are refused (SSRF)
    await launcher.check_identity(spec)
    preview = await launcher.preview(spec)
    plan = preview.plan
    index = {job.key: job.index for job in preview.expansion.jobs}
    invalid = [ItemFailure(key=key, index=index.get(key), error=why) for key, why in plan.invalid.items()]
    return ValidationReport(
        ok=not invalid and plan.runnable > 0, total=len(preview.expansion.jobs),
        duplicates=preview.expansion.duplicates, per_server=plan.per_server, invalid=invalid[:_INVALID_SHOWN],
        plan=plan.summary_lines(), estimate_s=plan.estimate_s if plan.estimate_s is not None else estimate_run_s(
            plan.runnable, hub.metrics.recent_prompt_s, servers=len(plan.per_server)),  # the fleet's latest prompts
    )  # fmt: skip


@router.post(
    "/batches", status_code=status.HTTP_202_ACCEPTED,
    responses={503: {"description": "The platform cannot take work now (see Retry-After)."}},
)  # fmt: skip
async def create_batch(
    spec: BatchSpec,
    request: Request,
    launcher: LauncherDep,
    settings: SettingsDep,
    key_name: KeyName,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchStarted:
    """Start a batch: a flow run of `generate-batch` with `spec` as its parameter.

    An `Idempotency-Key` sent again with the same body answers the same batch; with another body, 422.
    """
    check_api_request(spec, settings)
    await check_webhook(spec, settings)  # 422 naming `webhook`: internal addresses are refused (SSRF)
    await launcher.check_identity(spec)
    await check_daily_quota(launcher, key_name, settings.api_quota_gpu_seconds_daily)
    if settings.api_quota_images is not None:
        bound = requested_bound(spec)  # a sheet's rows need the expansion
        adds = bound if bound is not None else len((await launcher.preview(spec)).expansion.jobs)
        await _check_quota(launcher, settings.api_quota_images, key_name, adds, "this batch")
    run = await launcher.start(spec, idempotency_key, key_name)
    return BatchStarted(batch_id=str(run.id), name=spec.name, state=_state(run)[0],
                        links=_links(request, run, launcher))  # fmt: skip


@router.get("/batches")
async def list_batches(
    launcher: LauncherDep,
    _key: KeyName,
    state: Annotated[
        Literal["scheduled", "pending", "running", "completed", "failed", "cancelled", "cancelling", "crashed"] | None,
        Query(),
    ] = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,  # SQL offsets are 64-bit: bound them
) -> BatchList:
    """Batches, newest first."""
    runs = await launcher.list_batches(state=state, name=name, limit=limit, offset=offset)
    summaries = await asyncio.gather(*(_summary(launcher, run) for run in runs))
    return BatchList(batches=list(summaries), limit=limit, offset=offset)


async def _summary(launcher: Launcher, run: FlowRun) -> BatchSummary:
    """One row of the list, from the run and the batch's stored plan and journal (never expanded again)."""
    state, state_name = _state(run)
    summary = BatchSummary(
        batch_id=str(run.id), name=run.name, state=state, state_name=state_name, duration_s=_duration(run),
        created=run.created.isoformat() if run.created else None, submitted_by=tagged(run.tags, SUBMITTED_BY),
        resumed_from=tagged(run.tags, RESUMED_FROM),
    )  # fmt: skip
    try:
        spec = launcher.spec_of(run)
        summary.template = _template(spec)
        jobs, records = await asyncio.gather(
            launcher.plan(spec, run.id), launcher.records(spec, run)
        )
    except ComfyBatchError:  # an unreadable spec or store: the row still lists the run
        return summary
    summary.counts = _counts(jobs, this_run(records, run), spec, ended=_ended(run))
    return summary


def _template(spec: BatchSpec) -> str | None:
    return spec.workflow if isinstance(spec.workflow, str) else None


def _duration(run: FlowRun) -> float | None:
    """Seconds the run has been running: start to end, or to now while it runs."""
    if run.start_time is None:
        return None
    end = run.end_time or (None if _ended(run) else datetime.now(UTC))
    return None if end is None else max((end - run.start_time).total_seconds(), 0.0)


@router.get("/batches/{batch_id}")
async def get_batch(batch_id: UUID, request: Request, launcher: LauncherDep, hub: HubDep, _key: KeyName) -> BatchStatus:
    """A batch's state, counts, progress per server, ETA and first failures (from its job journal)."""
    run = await launcher.get(batch_id)
    settled = None
    if _settled(run):  # its hooks have written the record: the answer stays true until the batch runs again
        settled = ("status", run.id, run.state_id, await launcher.resumed_as(run), str(request.base_url))
        if (known := launcher.settled.get(settled)) is not None:
            return cast(BatchStatus, known)
    status = await _status(run, request, launcher, hub)
    if settled is not None:
        launcher.settled[settled] = status
    return status


def _settled(run: FlowRun) -> bool:
    """Whether the run ended long enough ago that its ending hooks are done with its record."""
    return _ended(run) and run.end_time is not None and datetime.now(UTC) - run.end_time > _SETTLE_AFTER


async def _status(run: FlowRun, request: Request, launcher: Launcher, hub: EventHub) -> BatchStatus:
    spec = launcher.spec_of(run)
    records = this_run(await launcher.records(spec, run), run)
    jobs = await launcher.plan(spec, run.id)
    ended = _ended(run)
    counts = _counts(jobs, records, spec, ended=ended)
    servers: dict[str, ServerProgress] = defaultdict(ServerProgress)
    for record in records.values():
        if record.server is not None:
            progress = servers[record.server]
            state = _item_state(record, ended=ended)
            progress.done += state == "done"
            progress.failed += state == "failed"
            progress.in_flight += state == "submitted"
    index = {job.key: job.index for job in jobs or []}
    failed = [record for record in records.values() if record.result is not None and record.result.status == "failed"]
    failures = [ItemFailure(key=r.key, index=index.get(r.key), error=(r.result and r.result.error) or "failed")
                for r in failed]  # fmt: skip
    state, state_name = _state(run)
    gpu_seconds = sum(r.result.gpu_seconds or 0.0 for r in records.values() if r.result and r.result.status == "done")
    # Draining marks a running batch's lanes; an ended batch's answer is kept (see `get_batch`), so it has none.
    reason, resumed_as, draining = await asyncio.gather(
        launcher.ending_message(run), launcher.resumed_as(run),
        _no_servers() if ended else launcher.draining_servers(shared=True),
    )  # fmt: skip
    return BatchStatus(batch_id=str(run.id), name=spec.name, state=state, state_name=state_name,
                       state_at=run.state.timestamp.isoformat() if run.state else None,
                       links=_links(request, run, launcher), counts=counts, submitted_by=tagged(run.tags, SUBMITTED_BY),
                       cancelled_by=_cancelled_by(reason), reason=reason, servers=dict(servers),
                       eta_s=_eta(records, counts, run), planned=jobs is not None,
                       failures=failures[:_FAILURES_SHOWN], resumed_from=tagged(run.tags, RESUMED_FROM),
                       resumed_as=str(resumed_as) if resumed_as else None, template=_template(spec),
                       gpu_seconds=round(gpu_seconds, 3), draining=sorted(draining),
                       events_seq=await hub.latest(run.id, run.created or datetime.now(UTC)))  # fmt: skip


async def _no_servers() -> frozenset[str]:
    return frozenset()


def _counts(jobs: list[JobSpec] | None, records: dict[str, JobRecord], spec: BatchSpec, *, ended: bool) -> BatchCounts:
    """Counts over the stored plan; before it exists, over the journal, with the total the request gives (if any)."""
    keys = [job.key for job in jobs] if jobs is not None else list(records)
    states = Counter(_item_state(records.get(key), ended=ended) for key in keys)
    total: int | None = len(keys) if jobs is not None else requested_total(spec)
    if total is not None and jobs is None and total < len(keys):
        total = None  # the journal knows more jobs than the request suggested: not exact after all
    finished = states["done"] + states["skipped"] + states["failed"] + states["cancelled"]
    return BatchCounts(total=total, done=states["done"] + states["skipped"], failed=states["failed"],
                       cancelled=states["cancelled"], pending=None if total is None else total - finished)  # fmt: skip


def _cancelled_by(reason: str | None) -> str | None:
    """Who cancelled: the key's name, or the command ("comfybatch stop") before the message's explanation."""
    if not reason or not reason.startswith(CANCELLED_BY):
        return None
    return reason.removeprefix(CANCELLED_BY).partition(": ")[0]


def _eta(records: dict[str, JobRecord], counts: BatchCounts, run: FlowRun) -> float | None:
    """Remaining images at the rate of this run so far: (now - first submit) / finished (a resumed batch's images
    stored by an earlier run count for neither)."""
    since = run.created.timestamp() if run.created else 0.0
    starts = [r.submitted_at or (r.result.queued_at if r.result else None) for r in records.values()]
    first = min((t for t in starts if t and t >= since), default=None)
    finished = sum(1 for r in records.values() if r.result and (r.result.finished_at or 0.0) >= since)
    if counts.pending is None:
        return None  # no plan yet and the request cannot say how many are left
    if first is None or finished == 0 or counts.pending == 0:
        return 0.0 if counts.total and counts.pending == 0 else None
    return (time.time() - first) / finished * counts.pending


@router.get("/batches/{batch_id}/items")
async def list_items(
    batch_id: UUID,
    launcher: LauncherDep,
    _key: KeyName,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,  # SQL offsets are 64-bit: bound them
) -> ItemList:
    """Every job of the batch in order, queued ones included, with what its journal recorded."""
    run = await launcher.get(batch_id)
    spec = launcher.spec_of(run)
    records = this_run(await launcher.records(spec, run), run)
    jobs = await launcher.plan(spec, run.id)
    planned: list[tuple[str, JobSpec | None]] = (
        [(job.key, job) for job in jobs] if jobs is not None else [(key, None) for key in sorted(records)]
    )
    items = []
    ended = _ended(run)
    for key, job in planned[offset : offset + limit]:
        record = records.get(key)
        result = record.result if record else None
        files = result.files if result else []
        source = job or (result.job if result else None)
        prompt = _prompt_of(source) if source else None
        items.append(ItemStatus(
            key=key, index=job.index if job else None, prompt=prompt, seed=job.seed if job else None,
            state=_item_state(record, ended=ended), server=record.server if record else None,
            error=result.error if result else None,
            files=len(files), image=f"/api/batches/{batch_id}/items/{key}/image" if files else None,
            file=files[0].uri.rpartition("/")[2] if files else None,
            media=media_type_of(files[0].uri) if files else None,
            values={k: v for k, v in source.values.items() if k != "prompt"} if source else None,
        ))  # fmt: skip
    return ItemList(items=items, total=len(planned), limit=limit, offset=offset, planned=jobs is not None)


def _prompt_of(job: JobSpec) -> str | None:
    prompt = job.values.get("prompt")
    return prompt if isinstance(prompt, str) else None


@router.get("/batches/{batch_id}/manifest")
async def get_manifest(
    batch_id: UUID, launcher: LauncherDep, _key: KeyName, format: Literal["csv", "parquet"] = "csv"
) -> Response:
    """The batch manifest as CSV or Parquet, once the batch has written it."""
    run = await launcher.get(batch_id)
    spec: BatchSpec = launcher.spec_of(run)
    relpath = f"{await launcher.batch_dir(spec, run.id)}/manifest.{format}"
    if not await launcher.exists(spec, relpath):
        raise BatchNotFound(f"batch {batch_id} has no manifest yet")
    headers = {"Content-Disposition": f'attachment; filename="{spec.name}-manifest.{format}"'}
    return Response(await launcher.read_file(spec, relpath), media_type=_MEDIA[format], headers=headers)


@router.post(
    "/batches/{batch_id}/cancel", status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "No such batch."}, 409: {"description": "The batch has already ended."}},
)  # fmt: skip
async def cancel_batch(batch_id: UUID, request: Request, launcher: LauncherDep, key_name: KeyName) -> BatchStarted:
    """Ask Prefect to cancel the batch's flow run; the key's name is recorded as who cancelled.

    A batch still cancelling answers its state again and nothing is recorded twice; one that has ended answers 409.
    """
    run = await launcher.cancel(batch_id, key_name)
    return BatchStarted(batch_id=str(run.id), name=run.name, state=_state(run)[0], links=_links(request, run, launcher))


@router.post(
    "/batches/{batch_id}/resume", status_code=status.HTTP_202_ACCEPTED,
    responses={404: {"description": "No such batch."},
               409: {"description": "The batch is still under way, every item is done, or it was a dry run."}},
)  # fmt: skip
async def resume_batch(
    batch_id: UUID, request: Request, launcher: LauncherDep, settings: SettingsDep, key_name: KeyName
) -> BatchStarted:
    """Render what an ended batch left undone (failed, cancelled and never-started items) in a new run of the same
    batch, tagged `resumed-from:<id>`; its stored images are kept, not rendered again. The page's "Retry failed" and
    "Render the rest". Asking again for the same batch answers the same new run.
    """
    run = await launcher.get(batch_id)
    spec = launcher.spec_of(run)
    if _ended(run):
        jobs, records = await asyncio.gather(
            launcher.plan(spec, run.id), launcher.records(spec, run)
        )
        counts = _counts(jobs, this_run(records, run), spec, ended=True)
        left = None if counts.total is None else counts.total - counts.done
        if left == 0:
            raise BatchConflict(f"every item of batch {spec.name} is done: there is nothing left to render")
        if settings.api_quota_images is not None and left is not None:
            await _check_quota(launcher, settings.api_quota_images, key_name, left, "resuming this batch")
    resumed = await launcher.resume(batch_id, key_name)
    return BatchStarted(batch_id=str(resumed.id), name=resumed.name, state=_state(resumed)[0],
                        links=_links(request, resumed, launcher))  # fmt: skip
