"""`process-inbox`: turn job sheets dropped in an inbox into batches, one batch per sheet.

A sheet is claimed by moving it to `processing/`, then moved to `done/` or `failed/` with a report
beside it (`<stem>-2.csv` and so on when a sheet of that name is already there: nothing is overwritten).
A sheet whose bytes were already processed is set aside as a duplicate. Sheets left in `processing/` by
a crashed run are resumed by the next run, so runs must not overlap: the scheduled-production deployment
allows one at a time.
"""

import asyncio
import hashlib
import json
from pathlib import PurePosixPath
from typing import Any, Literal

from prefect import flow, get_run_logger
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfybatch.errors import BatchIncomplete, BatchRequestError, ComfyBatchError, StorageError
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchReport, BatchSpec
from comfybatch.outputs.storage import OutputStore
from comfybatch.problems import validation_line
from comfybatch.settings import get_settings
from comfybatch.sheets import SHEET_EXTENSIONS
from comfybatch.slug import name_slug

PROCESSING, DONE, FAILED = "processing", "done", "failed"
_SPEC_COLUMNS = ("workflow",)  # a sheet may name its workflow in a column (one value for every row)
SheetStatus = Literal["done", "failed", "duplicate", "skipped"]


class SheetOutcome(BaseModel):
    """What happened to one sheet."""

    model_config = ConfigDict(frozen=True)

    sheet: str
    status: SheetStatus = Field(description="done | failed | duplicate | skipped (another run took the sheet)")
    batch: str | None = None
    message: str = ""
    sha256: str = ""
    report: BatchReport | None = None


@flow(name="process-inbox", log_prints=False)
async def process_inbox(inbox: str | None = None, workflow: str | None = None) -> list[SheetOutcome]:
    """Run one batch per job sheet waiting in the inbox (CSV, XLSX, Parquet).

    Args:
        inbox: Folder or fsspec URL; the configured inbox when empty.
        workflow: Template or workflow file for sheets that name none (column `workflow` or a sidecar).
    """
    settings = get_settings()
    store = OutputStore(inbox or settings.inbox)
    outcomes = []
    for relpath in await asyncio.to_thread(_waiting_sheets, store):
        outcomes.append(await _process(store, relpath, default_workflow=workflow or settings.inbox_workflow))
    get_run_logger().info("inbox: %s", ", ".join(f"{o.sheet} {o.status}" for o in outcomes) or "nothing to do")
    return outcomes


def _waiting_sheets(store: OutputStore) -> list[str]:
    """Sheets left in `processing/` by a crashed run first, then new ones at the top level."""
    files = store.list("")
    resumed = [path for path in files if path.startswith(f"{PROCESSING}/") and _is_sheet(path) and path.count("/") == 1]
    new = [path for path in files if "/" not in path and _is_sheet(path)]
    return sorted(resumed) + sorted(new)


def _is_sheet(relpath: str) -> bool:
    return PurePosixPath(relpath).suffix.lower() in SHEET_EXTENSIONS


async def _process(store: OutputStore, relpath: str, *, default_workflow: str | None) -> SheetOutcome:
    name = PurePosixPath(relpath).name
    claimed = relpath if relpath.startswith(f"{PROCESSING}/") else f"{PROCESSING}/{name}"
    if claimed != relpath and not await asyncio.to_thread(_move, store, relpath, claimed):
        return SheetOutcome(sheet=name, status="skipped", message="taken by another run")
    data = await asyncio.to_thread(store.read_bytes, claimed)
    digest = hashlib.sha256(data).hexdigest()
    if await asyncio.to_thread(_already_done, store, digest):
        return await _settle(store, claimed, SheetOutcome(sheet=name, status="duplicate", sha256=digest,
                                                          message="the same sheet was processed before"))  # fmt: skip
    try:
        spec = await asyncio.to_thread(_spec_for, store, claimed, default_workflow)
        report = await generate_batch(spec)
        outcome = SheetOutcome(sheet=name, status="done", batch=spec.name, sha256=digest, report=report,
                               message=f"{report.done} done, {report.skipped} already stored")  # fmt: skip
    except BatchIncomplete as incomplete:
        outcome = SheetOutcome(sheet=name, status="failed", sha256=digest, report=incomplete.report,
                               message=str(incomplete))  # fmt: skip
    except ComfyBatchError as error:  # a bad sheet or an unusable fleet: the sheet waits in failed/
        outcome = SheetOutcome(sheet=name, status="failed", sha256=digest, message=str(error))
    except Exception as error:  # a bug must not leave the sheet blocking the inbox in processing/
        get_run_logger().exception("%s: internal error", name)
        outcome = SheetOutcome(sheet=name, status="failed", sha256=digest, message=f"internal error: {error!r}")
    return await _settle(store, claimed, outcome)


def _spec_for(store: OutputStore, claimed: str, default_workflow: str | None) -> BatchSpec:
    """The batch for a sheet: a sidecar `<stem>.json` (BatchSpec fields) or a `workflow` column, else the default."""
    stem = PurePosixPath(claimed).stem
    fields: dict[str, Any] = {}
    sidecar = f"{PurePosixPath(claimed).name.rsplit('.', 1)[0]}.json"
    for candidate in (sidecar, f"{PROCESSING}/{sidecar}"):
        if store.exists(candidate):
            # A bad sidecar is a bad request: raised as anything else, the sheet would stay in processing/
            # and every later run would resume it first and fail again, wedging the inbox.
            try:
                fields = json.loads(store.read_bytes(candidate))
            except ValueError as exc:
                raise BatchRequestError(f"{stem}: {candidate} is not valid JSON: {exc}") from None
            if not isinstance(fields, dict):
                raise BatchRequestError(f"{stem}: {candidate} must hold a JSON object of batch fields")
            break
    fields.setdefault("workflow", _workflow_column(store, claimed) or default_workflow)
    if not fields["workflow"]:
        raise BatchRequestError(f"{stem}: no workflow: add a 'workflow' column or a {sidecar} sidecar")
    fields.update(name=fields.get("name") or name_slug(stem, fallback="sheet"), sheet=store.uri(claimed))
    try:
        return BatchSpec.model_validate(fields)
    except ValidationError as exc:
        raise BatchRequestError(f"{stem}: {validation_line(exc)}") from None


def _workflow_column(store: OutputStore, claimed: str) -> str | None:
    from comfybatch.sheets import read_sheet  # pandas import only when a sheet is read

    frame = read_sheet(store.uri(claimed))
    for column in _SPEC_COLUMNS:
        if column in frame.columns:
            values = {str(value) for value in frame[column].dropna() if str(value).strip()}
            if len(values) == 1:
                return values.pop()
    return None


def _already_done(store: OutputStore, digest: str) -> bool:
    for relpath in store.list(DONE):
        if relpath.endswith(".report.json"):
            try:
                if json.loads(store.read_bytes(relpath)).get("sha256") == digest:
                    return True
            except (ValueError, StorageError):
                continue
    return False


async def _settle(store: OutputStore, claimed: str, outcome: SheetOutcome) -> SheetOutcome:
    folder = DONE if outcome.status in ("done", "duplicate") else FAILED
    target = await asyncio.to_thread(_free_target, store, folder, PurePosixPath(claimed).name)
    await asyncio.to_thread(_move, store, claimed, target)
    report = outcome.model_dump_json(indent=2, exclude={"report": {"plan"}}).encode()
    await asyncio.to_thread(store.write_bytes, f"{target}.report.json", report)
    get_run_logger().info("%s -> %s: %s", outcome.sheet, target, outcome.message)
    return outcome


def _free_target(store: OutputStore, folder: str, name: str) -> str:
    """`folder/name`, or `folder/<stem>-2<suffix>`, -3, … when an earlier sheet of that name is there (keep both)."""
    stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
    target, number = f"{folder}/{name}", 2
    while store.exists(target) or store.exists(f"{target}.report.json"):
        target, number = f"{folder}/{stem}-{number}{suffix}", number + 1
    return target


def _move(store: OutputStore, source: str, target: str) -> bool:
    """Move within the store; False when the source is already gone (another run took it)."""
    return store.move(source, target)
