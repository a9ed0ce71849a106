"""The record written at every ending of a batch run: manifest, contact sheets, artifacts, the finished event.

A run that goes to its end writes it itself (`Ending.finish`). A run stopped early writes what it can on its
way out (`Ending.early`), and the `on_cancellation`/`on_crashed` hook (`record_ending`) writes it again from the
stored plan and journal in the process that saw the run end (the runner), so a process killed outright still
leaves its record.
"""

import asyncio
import contextlib
import json
import time
from typing import Any
from uuid import UUID

from prefect import get_run_logger
from prefect.artifacts import acreate_markdown_artifact, acreate_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterState,
    TaskRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.context import FlowRunContext
from prefect.exceptions import TerminationSignal
from prefect.states import Cancelled

from comfybatch.errors import BatchIncomplete
from comfybatch.flows.plan import FleetPlan
from comfybatch.models import BatchReport, BatchSpec, JobResult, JobSpec
from comfybatch.notify.webhooks import BatchWebhooks
from comfybatch.outputs.contact_sheet import Thumbnails, write_contact_sheets
from comfybatch.outputs.identity import run_folder
from comfybatch.outputs.manifest import write_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal, read_plan
from comfybatch.settings import get_settings
from comfybatch.tasks.events import emit_batch_event

_ENDING_READ_S = 5.0
_FAILURES_KEPT = 50


class Ending:
    """Writes a run's record at every ending: the manifest, contact sheets, artifacts and the finished event."""

    def __init__(
        self, spec: BatchSpec, store: OutputStore, batch_dir: str, jobs: list[JobSpec], results: list[JobResult], *,
        skipped: int, plan: FleetPlan | None, duplicates: int, journal: JobJournal, run_id: UUID | None = None,
        thumbnails: Thumbnails | None = None,
    ) -> None:  # fmt: skip
        self.spec, self.store, self.batch_dir, self.jobs, self.results = spec, store, batch_dir, jobs, results
        self.skipped, self.plan, self.duplicates, self.journal = skipped, plan, duplicates, journal
        self.run_id = run_id  # outside the run's own context (the runner's hooks), artifacts name their run
        self.thumbnails = thumbnails  # the sheet's tiles made as the images landed (this process's jobs only)

    async def finish(self) -> BatchReport:
        """The record of a run that went to the end.

        Raises:
            BatchIncomplete (after writing everything) when some jobs failed.
        """
        report = await self._write(self.results)
        if report.failures:
            first_key, first_error = report.failures[0]
            number = next((f"#{r.job.index + 1}" for r in self.results if r.job.job_key == first_key), first_key)
            raise BatchIncomplete(
                f"{self.spec.name}: {report.failed} of {report.total} job(s) failed; rerun to retry them (finished "
                f"images are kept). First: {number}: {first_error}",
                report=report,
            )
        return report

    async def early(self, exc: BaseException, *, run_id: str) -> None:
        """The record of a run that is going before its end: jobs not finished are written as cancelled, with why.

        Never raises: the run's own ending (cancel, crash) must go on.
        """
        try:
            reason = await _ending_reason(exc, run_id)
            await self.stopped(reason)
            if run_id:
                await cancel_task_runs(run_id, reason)
        except Exception as error:  # the record is best effort here; the run's own ending decides its state
            get_run_logger().warning("%s: record not fully written at its early end: %r", self.spec.name, error)

    async def stopped(self, reason: str) -> BatchReport:
        """Write the record of a run stopped for `reason`: jobs not finished are cancelled, with that reason."""
        records = await self.journal.load()
        finished = {result.job.key for result in self.results}
        cancelled = []
        for job in self.jobs:
            if job.key in finished:
                continue
            record = records.get(job.key)
            if record is not None and record.result is not None and record.result.status != "cancelled":
                self.results.append(record.result)  # finished meanwhile (another process saw it through)
                continue
            result = JobResult(job=job, status="cancelled", error=reason, finished_at=time.time(),
                               server=record.server if record else None,
                               prompt_id=record.prompt_id if record else None)  # fmt: skip
            if record is not None and record.state == "submitted":
                await self.journal.finished(result)  # in flight: the record says it was stopped, not lost
            cancelled.append(result)
        return await self._write([*self.results, *cancelled], ended=reason)

    async def _write(self, results: list[JobResult], *, ended: str = "") -> BatchReport:
        spec, store = self.spec, self.store
        results = sorted(results, key=lambda result: result.job.index)
        axes = list(spec.sweep.axes) if len(spec.sweep.axes) == 2 and not spec.sweep.zipped else []
        if self.thumbnails is not None:
            await self.thumbnails.settled()
        # Manifest and sheets side by side: the batch's return waits for the slower only.
        manifest_uris, sheets = await asyncio.gather(
            asyncio.to_thread(write_manifest, store, self.batch_dir, results),
            asyncio.to_thread(write_contact_sheets, store, self.batch_dir, results, sweep_axes=axes,
                              thumbnails=self.thumbnails),
        )  # fmt: skip
        manifest = list(manifest_uris)
        failures = [(r.job.job_key, r.error or "failed") for r in results if r.status == "failed"]
        done = sum(1 for r in results if r.status == "done") - self.skipped
        cancelled = sum(1 for r in results if r.status == "cancelled")
        gpu_seconds = sum(r.gpu_seconds or 0.0 for r in results if r.status == "done")
        report = BatchReport(
            name=spec.name, total=len(self.jobs), done=done, failed=len(failures), skipped=self.skipped,
            cancelled=cancelled, duplicates=self.duplicates, output=store.uri(self.batch_dir), manifest=manifest,
            contact_sheets=sheets.uris, failures=failures[:_FAILURES_KEPT],
            plan=self.plan.summary_lines() if self.plan else [], ended=ended, gpu_seconds=round(gpu_seconds, 3),
        )  # fmt: skip
        await _publish_results(spec, results, report, preview=sheets.preview, run_id=self.run_id)
        emit_batch_event(spec.name, "finished", done=done, failed=len(failures), skipped=self.skipped,
                         cancelled=cancelled, ended=ended, output=report.output, manifest=manifest,
                         gpu_seconds=report.gpu_seconds,
                         failures=[{"job_key": key, "error": error[:200]} for key, error in failures[:10]])  # fmt: skip
        return report


async def _ending_reason(exc: BaseException, run_id: str) -> str:
    """Why the run ends early, in the user's words: the cancel's own message (who asked) where Prefect has one."""
    reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else "cancelled"
    if not isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, TerminationSignal)):
        reason = f"the run crashed: {type(exc).__name__}"
    if run_id:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(_ENDING_READ_S), get_client() as client:
                state = (await client.read_flow_run(UUID(run_id))).state
            if state is not None and state.type in (StateType.CANCELLING, StateType.CANCELLED) and state.message:
                reason = state.message
    return reason


async def cancel_task_runs(run_id: str, reason: str) -> None:
    """Task runs stopped by the batch's end are Cancelled, not Crashed (Prefect's task engine calls any
    cancellation a crash)."""
    task_filter = TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(
        any_=[StateType.CRASHED, StateType.RUNNING, StateType.PENDING, StateType.SCHEDULED])))  # fmt: skip
    async with asyncio.timeout(_ENDING_READ_S * 2), get_client() as client:
        runs = await client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(run_id)])), task_run_filter=task_filter
        )
        for task_run in runs:
            await client.set_task_run_state(task_run.id, Cancelled(message=reason), force=True)


def _table_row(r: JobResult, batch_link: str | None) -> dict[str, object]:
    """One image as the results table shows it: numbered from 1 as on the dashboard, its file by name, and a link
    the dashboard serves (never a path on the worker)."""
    prompt = r.job.values.get("prompt")
    image = f"{batch_link}/items/{r.job.key}/image" if batch_link and r.files else ""
    return {"#": r.job.index + 1, "status": r.status, "prompt": prompt[:80] if isinstance(prompt, str) else "",
            "seed": r.job.seed, "server": r.server or "", "file": r.files[0].uri.rsplit("/", 1)[-1] if r.files else "",
            "image": image, "error": (r.error or "")[:200]}  # fmt: skip


def dashboard_batch_link(run_id: UUID | None) -> str | None:
    """The batch's address on the dashboard (`/api/batches/<flow run id>`), from the dashboard's host and port."""
    if run_id is None:
        context = FlowRunContext.get()
        run_id = context.flow_run.id if context is not None and context.flow_run is not None else None
    if run_id is None:
        return None
    settings = get_settings()
    # A wildcard listen address is no address to open: the same machine is.
    host = "127.0.0.1" if settings.dashboard_host in ("0.0.0.0", "::", "") else settings.dashboard_host
    return f"http://{host}:{settings.dashboard_port}/api/batches/{run_id}"


async def _publish_results(spec: BatchSpec, results: list[JobResult], report: BatchReport, *,
                           preview: str | None, run_id: UUID | None = None) -> None:  # fmt: skip
    link = dashboard_batch_link(run_id)
    rows = [_table_row(result, link) for result in results[:1000]]
    numbers = {result.job.job_key: result.job.index + 1 for result in results}
    lines = [
        f"# {spec.name}", "", *([f"Ended early: {report.ended}", ""] if report.ended else []),
        f"- done: {report.done}", f"- skipped (already stored): {report.skipped}",
        f"- failed: {report.failed}", f"- not rendered (the run ended first): {report.cancelled}",
        f"- GPU time (ComfyUI's execution of every image, earlier runs' included): {report.gpu_seconds:.1f} s",
        *([f"- [Manifest (CSV)]({link}/manifest) · [all images and the manifest (zip)]({link}/archive.zip) · "
           f"each image from the results table's links (dashboard API)"] if link else []),
    ]  # fmt: skip
    if preview is not None:
        lines += ["", "## Contact sheet", "", f"Every image of {spec.name}, numbered as on the dashboard.", "",
                  f"![Contact sheet of {spec.name}]({preview})"]  # fmt: skip
    if report.failures:
        lines += ["", "## Failures", *(f"- #{numbers.get(key, key)}: {error}" for key, error in report.failures[:20])]
    markdown = "\n".join(lines)
    # One write after the other: two at once on SQLite collide into "database is locked", which Prefect's client
    # answers with a 2 s sleep.
    if run_id is None:
        await acreate_table_artifact(table=rows, key=f"{spec.name}-results", description=f"Jobs of {spec.name}")
        await acreate_markdown_artifact(markdown=markdown, key=f"{spec.name}-summary", description="Batch summary")
        return
    async with get_client() as client:  # no run context here: the artifacts name the run they belong to
        await client.create_artifact(
            ArtifactCreate(
                key=f"{spec.name}-results",
                type="table",
                data=json.dumps(rows),
                description=f"Jobs of {spec.name}",
                flow_run_id=run_id,
            )
        )
        await client.create_artifact(ArtifactCreate(key=f"{spec.name}-summary", type="markdown", data=markdown,
                                                    description="Batch summary", flow_run_id=run_id))  # fmt: skip


async def record_ending(flow: Any, flow_run: FlowRun, state: State) -> None:
    """`on_cancellation` / `on_crashed`: write the batch's record from its stored plan and journal, in the process
    that saw the run end; a run killed before it could write anything still gets its manifest."""
    try:
        spec = BatchSpec.model_validate(flow_run.parameters.get("spec"))
    except ValueError:
        return  # not a batch run this hook can read
    store = OutputStore(spec.output or get_settings().output_root)
    batch_dir = await asyncio.to_thread(run_folder, store, spec, str(flow_run.id))
    jobs = await asyncio.to_thread(read_plan, store, batch_dir, batch=spec.name)
    if not jobs:
        return  # ended before its plan was stored: nothing was rendered
    journal = JobJournal(store, batch_dir)  # `stopped` takes every finished job from it
    ending = Ending(spec, store, batch_dir, jobs, [], skipped=0, plan=None, duplicates=0, journal=journal,
                    run_id=flow_run.id)  # fmt: skip
    reason = state.message or state.name or "ended"
    if state.type == StateType.CANCELLING:
        with contextlib.suppress(Exception):  # the request's own words ("cancelled by alice") where Prefect has them
            async with asyncio.timeout(_ENDING_READ_S), get_client() as client:
                history = await client.read_flow_run_states(flow_run.id)
            reason = next((s.message for s in reversed(history) if s.message and s.type == StateType.CANCELLING),
                          reason)  # fmt: skip
    await cancel_task_runs(str(flow_run.id), reason)  # a killed process left them Running
    async with BatchWebhooks.for_run(spec, get_settings(), run_id=str(flow_run.id), tags=flow_run.tags,
                                     output=store.uri(batch_dir), strict=False):  # fmt: skip
        await ending.stopped(reason)
