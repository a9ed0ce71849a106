"""`/api/batches`: create, list, read, page items, download the manifest, cancel."""

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Header, Query, Request, Response, status
from prefect.client.schemas.objects import FlowRun

from comfybatch.dashboard.deps import KeyName, LauncherDep
from comfybatch.dashboard.schemas import (
    BatchCounts,
    BatchLinks,
    BatchList,
    BatchStarted,
    BatchStatus,
    BatchSummary,
    ItemList,
    ItemStatus,
)
from comfybatch.errors import BatchNotFound
from comfybatch.models import BatchSpec
from comfybatch.records import JobRecord

router = APIRouter(prefix="/api/batches", tags=["batches"])
_MEDIA = {"csv": "text/csv", "parquet": "application/vnd.apache.parquet"}


def _links(request: Request, run: FlowRun, launcher: LauncherDep) -> BatchLinks:
    base = f"/api/batches/{run.id}"
    return BatchLinks(self=base, items=f"{base}/items", manifest=f"{base}/manifest", prefect_ui=launcher.ui_url(run.id))


def _state(run: FlowRun) -> tuple[str, str]:
    return (run.state_type.value if run.state_type else "UNKNOWN", run.state_name or "")


def _item_state(record: JobRecord) -> str:
    return record.result.status if record.result else "submitted"


@router.post("", status_code=status.HTTP_202_ACCEPTED)
async def create_batch(
    spec: BatchSpec,
    request: Request,
    launcher: LauncherDep,
    key_name: KeyName,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> BatchStarted:
    """Start a batch: a flow run of `generate-batch` with `spec` as its parameter."""
    run = await launcher.start(spec, idempotency_key, key_name)
    return BatchStarted(batch_id=str(run.id), name=spec.name, state=_state(run)[0],
                        links=_links(request, run, launcher))  # fmt: skip


@router.get("")
async def list_batches(
    launcher: LauncherDep,
    _key: KeyName,
    state: Annotated[
        Literal["scheduled", "pending", "running", "completed", "failed", "cancelled", "cancelling", "crashed"] | None,
        Query(),
    ] = None,
    name: str | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> BatchList:
    """Batches, newest first."""
    runs = await launcher.list_batches(state=state, name=name, limit=limit, offset=offset)
    summaries = [BatchSummary(batch_id=str(run.id), name=run.name, state=_state(run)[0], state_name=_state(run)[1],
                              created=run.created.isoformat() if run.created else None) for run in runs]  # fmt: skip
    return BatchList(batches=summaries, limit=limit, offset=offset)


@router.get("/{batch_id}")
async def get_batch(batch_id: UUID, request: Request, launcher: LauncherDep, _key: KeyName) -> BatchStatus:
    """A batch's state and its item counts from the job journal."""
    run = await launcher.get(batch_id)
    spec = launcher.spec_of(run)
    states = [_item_state(record) for record in (await launcher.records(spec)).values()]
    counts = BatchCounts(total=len(states), done=sum(s in ("done", "skipped") for s in states),
                         failed=states.count("failed"), pending=states.count("submitted"))  # fmt: skip
    submitter = next((tag.removeprefix("submitted-by:") for tag in run.tags if tag.startswith("submitted-by:")), None)
    state, state_name = _state(run)
    return BatchStatus(batch_id=str(run.id), name=spec.name, state=state, state_name=state_name,
                       links=_links(request, run, launcher), counts=counts, submitted_by=submitter)  # fmt: skip


@router.get("/{batch_id}/items")
async def list_items(
    batch_id: UUID,
    launcher: LauncherDep,
    _key: KeyName,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ItemList:
    """The batch's jobs as the journal records them, sorted by key."""
    spec = launcher.spec_of(await launcher.get(batch_id))
    records = sorted((await launcher.records(spec)).values(), key=lambda record: record.key)
    items = []
    for record in records[offset : offset + limit]:
        files = record.result.files if record.result else []
        image = f"/api/batches/{batch_id}/items/{record.key}/image" if files else None
        error = record.result.error if record.result else None
        items.append(ItemStatus(key=record.key, state=_item_state(record), server=record.server, error=error,
                                files=len(files), image=image))  # fmt: skip
    return ItemList(items=items, total=len(records), limit=limit, offset=offset)


@router.get("/{batch_id}/manifest")
async def get_manifest(
    batch_id: UUID, launcher: LauncherDep, _key: KeyName, format: Literal["csv", "parquet"] = "csv"
) -> Response:
    """The batch manifest as CSV or Parquet, once the batch has written it."""
    spec: BatchSpec = launcher.spec_of(await launcher.get(batch_id))
    relpath = f"{spec.name}/manifest.{format}"
    if not await launcher.exists(spec, relpath):
        raise BatchNotFound(f"batch {batch_id} has no manifest yet")
    headers = {"Content-Disposition": f'attachment; filename="{spec.name}-manifest.{format}"'}
    return Response(await launcher.read_file(spec, relpath), media_type=_MEDIA[format], headers=headers)


@router.post("/{batch_id}/cancel", status_code=status.HTTP_202_ACCEPTED)
async def cancel_batch(batch_id: UUID, request: Request, launcher: LauncherDep, _key: KeyName) -> BatchStarted:
    """Ask Prefect to cancel the batch's flow run."""
    run = await launcher.cancel(batch_id)
    return BatchStarted(batch_id=str(run.id), name=run.name, state=_state(run)[0], links=_links(request, run, launcher))
