"""One image job on one server: submit -> follow -> download -> store -> record (Prefect-free)."""

import asyncio
import contextlib
import tempfile
from pathlib import Path, PurePosixPath

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.follow import EventHandler, PromptResult, Timeouts
from comfybatch.comfy.protocol import OutputFile
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import ComfyBatchError, JobLost
from comfybatch.inputs import InputPolicy, ensure_uploaded, upload_values
from comfybatch.models import JobResult, JobSpec, StoredFile
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal


def prepare_workflow(job: JobSpec) -> ApiWorkflow:
    """The job's graph with its own `filename_prefix`: traceable files, and never a cache no-op."""
    prefix = f"comfybatch/{job.batch}/{job.job_key}"
    if "filename_prefix" in job.workflow.parameters():
        return job.workflow.bind({"filename_prefix": prefix})
    return job.workflow


async def execute_job(
    comfy: ComfyClient, job: JobSpec, *, store: OutputStore, journal: JobJournal, batch_dir: str,
    timeouts: Timeouts, attempt: int = 1, resume_prompt_id: str | None = None, lease_id: str | None = None,
    comfyui_version: str | None = None, on_event: EventHandler | None = None, input_policy: InputPolicy | None = None,
    new_id: str | None = None,
) -> JobResult:  # fmt: skip
    """Run `job` on `comfy` (or finish `resume_prompt_id` there) and store its outputs; a new prompt gets the id
    `new_id` (the caller's, to follow it by) or a fresh one.

    Input images the job names are put on the server first, unless it has them already (content-addressed).

    Raises:
        ComfyBatchError subclasses from the client, DownloadError, StorageError; ConfigError when an input
        image changed or vanished since the batch was checked.
    """
    result: PromptResult | None = None
    if resume_prompt_id is not None:
        try:
            result = await comfy.resume(resume_prompt_id, timeouts=timeouts)
        except JobLost:
            result = None  # the server restarted or forgot it: render it anew
    if result is None:
        for location, sha256 in upload_values(job.values):  # on this server, before the prompt names them
            await ensure_uploaded(comfy, location, sha256, input_policy or InputPolicy())
        prompt_id = new_id or new_prompt_id()
        await journal.submitted(job, server=comfy.name, prompt_id=prompt_id, lease_id=lease_id)  # before POST
        result = await comfy.run(prepare_workflow(job), prompt_id=prompt_id, timeouts=timeouts, on_event=on_event)
    files = await store_outputs(comfy, job, result.outputs, store=store, batch_dir=batch_dir)
    job_result = JobResult(
        job=job, status="done", server=comfy.name, prompt_id=result.prompt_id, attempts=attempt,
        queued_at=result.queued_at, started_at=result.started_at, finished_at=result.finished_at, files=files,
        comfyui_version=comfyui_version, gpu_seconds=result.execution_s,
    )  # fmt: skip
    await journal.finished(job_result)
    await _forget(comfy, result.prompt_id)
    return job_result


async def store_outputs(
    comfy: ComfyClient, job: JobSpec, outputs: list[OutputFile], *, store: OutputStore, batch_dir: str
) -> list[StoredFile]:
    """Download every saved output as `<batch_dir>/<index>_<slug>_<seed>[_n].<ext>`, bytes untouched."""
    wanted = [output for output in outputs if output.type == "output"] or outputs  # previews only if nothing saved
    stored: list[StoredFile] = []
    for number, output in enumerate(wanted):
        suffix = PurePosixPath(output.filename).suffix or ".bin"
        relpath = f"{batch_dir}/{job.file_stem}{f'_{number}' if number else ''}{suffix}"
        local = store.local_path(relpath)
        if local is not None:
            saved = await comfy.download(output, local)
        else:
            with tempfile.TemporaryDirectory(prefix="comfybatch-") as scratch:
                saved = await comfy.download(output, Path(scratch) / output.filename)
                await asyncio.to_thread(store.put_file, saved.path, relpath)
        stored.append(StoredFile(uri=store.uri(relpath), sha256=saved.sha256, size_bytes=saved.size_bytes,
                                 node_id=output.node_id, media=output.media))  # fmt: skip
    return stored


async def _forget(comfy: ComfyClient, prompt_id: str) -> None:
    # ComfyUI keeps up to 10,000 history entries in RAM; ours are collected, so drop them.
    with contextlib.suppress(ComfyBatchError):  # best effort: the outputs are already stored
        await comfy.delete_history([prompt_id])
