"""Run a batch in this process with a progress bar: what `comfybatch run` and `demo` do."""

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from comfybatch.errors import BatchIncomplete, BatchRequestError, RequestProblem
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchReport, BatchSpec
from comfybatch.slug import name_slug
from comfybatch.tasks.events import add_listener

_FINAL = {"comfybatch.item.done", "comfybatch.item.failed", "comfybatch.item.skipped"}


def parse_sets(pairs: Sequence[str]) -> dict[str, Any]:
    """`name=value` pairs; values are JSON when they parse (`steps=20`, `cfg=6.5`), text otherwise.

    Raises:
        BatchRequestError naming the malformed pair.
    """
    values: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise BatchRequestError("bad --set", problems=(RequestProblem(f"expected name=value, got {pair!r}"),))
        try:
            values[name.strip()] = json.loads(raw)
        except ValueError:
            values[name.strip()] = raw
    return values


def default_name(workflow: str, sheet: str | None) -> str:
    """A stable batch name, so running the same command again resumes the same batch."""
    stem = Path(workflow).stem if workflow.endswith(".json") else workflow
    text = f"{stem}-{Path(sheet).stem}" if sheet else stem
    return name_slug(text, fallback="batch")


async def run_with_progress(spec: BatchSpec, *, console: Console | None = None) -> tuple[BatchReport, int]:
    """Run `spec`, drawing a progress bar from the flow's item events; returns the report and an exit code."""
    console = console or Console(stderr=True)
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as progress:  # fmt: skip
        bar = progress.add_task(spec.name, total=None)

        def on_event(name: str, payload: dict[str, Any]) -> None:
            if name == "comfybatch.batch.started":
                progress.update(bar, total=payload.get("total"))
            elif name in _FINAL:
                progress.advance(bar)

        remove = add_listener(on_event)
        try:
            report = await generate_batch(spec)
        except BatchIncomplete as incomplete:
            report = incomplete.report if incomplete.report is not None else BatchReport(name=spec.name)
        finally:
            remove()
    print_report(report, console)
    return report, 0 if report.complete or report.dry_run else 1


def print_report(report: BatchReport, console: Console) -> None:
    if report.dry_run:
        console.print(
            f"[bold]dry run[/] {report.name}: {report.total} job(s), {report.duplicates} duplicate(s) dropped"
        )
    else:
        console.print(f"[bold]{report.name}[/]: {report.done} done, {report.failed} failed, {report.skipped} skipped "
                      f"(already stored) of {report.total}")  # fmt: skip
    for line in report.plan:
        console.print(f"  {line}", markup=False, highlight=False)
    for job_key, error in report.failures[:10]:
        console.print(f"  failed {job_key}: {error}", markup=False, highlight=False)
    if report.output:
        console.print(f"  images:   {report.output}", markup=False, highlight=False)
    for uri in report.manifest:
        console.print(f"  manifest: {uri}", markup=False, highlight=False)


async def run_on_platform(spec: BatchSpec, *, api_url: str, timeout_s: float = 1800.0) -> int:
    """Run `spec` through the served generate-batch deployment and wait for it; exit code as `run`."""
    from prefect.deployments import arun_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from comfybatch.deployments.names import GENERATE_BATCH

    console = Console(stderr=True)
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        console.print(f"running {spec.name} through {GENERATE_BATCH} (watch it in the Prefect UI) ...")
        flow_run = await arun_deployment(GENERATE_BATCH, parameters={"spec": spec.model_dump(mode="json")},
                                         timeout=timeout_s, as_subflow=False)  # fmt: skip
    state = flow_run.state
    ui = api_url.removesuffix("/api")
    console.print(f"flow run {flow_run.name}: {state.name if state else 'unknown'}  {ui}/runs/flow-run/{flow_run.id}")
    batch_dir = Path(spec.output or "out") / spec.name
    images = sorted(batch_dir.glob("*.png")) if batch_dir.is_dir() else []
    console.print(
        f"  images:   {batch_dir}  ({len([p for p in images if not p.stem.startswith(('contact', 'xy'))])} PNG)"
    )
    return 0 if state is not None and state.is_completed() else 1
