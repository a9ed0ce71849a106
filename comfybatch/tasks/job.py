"""`render-image`: one Prefect task run per image job, failing over between servers."""

import contextlib
import itertools
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import Any, cast

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from prefect.tasks import TaskRunNameCallbackWithParameters

from comfybatch.blocks.connection import session_for
from comfybatch.comfy.client import new_prompt_id
from comfybatch.comfy.events import ComfyEvent
from comfybatch.comfy.follow import EventHandler, Timeouts
from comfybatch.comfy.loaders import loaded_models
from comfybatch.errors import (
    ComfyBatchError,
    FleetExhausted,
    JobInterrupted,
    JobLost,
    JobTimeout,
    PromptMoved,
    ServerUnavailable,
)
from comfybatch.inputs import InputPolicy
from comfybatch.models import JobResult, JobSpec
from comfybatch.outputs.contact_sheet import Thumbnails
from comfybatch.outputs.storage import OutputStore
from comfybatch.pipeline import execute_job
from comfybatch.problems import why_unreachable
from comfybatch.records import JobJournal, JobRecord
from comfybatch.tasks.dispatch import NoServerAvailable, Slot, SlotBroker
from comfybatch.tasks.events import ProgressThrottle, emit_item_event
from comfybatch.tasks.moves import InFlight, Tracked, unless_moved
from comfybatch.tasks.retry import retry_if_retryable

_DOWN_ERRORS = (ServerUnavailable, JobTimeout, JobLost)  # the server itself looks unhealthy
_LOOKAHEAD = 64  # how far down the queue `next_job` looks for a job whose models a server has loaded


def retry_delays(retries: int, base_s: float) -> list[float]:
    """Exponential back-off as plain numbers (`base`, `2·base`, …): Prefect's UI shows a list, not a callable."""
    return [base_s * 2**attempt for attempt in range(max(1, retries))]


def task_run_name(parameters: dict[str, Any]) -> str:
    """`<batch>-<n>-<slug>`, n counted from 1 as the dashboard and contact sheet number images."""
    job: JobSpec = parameters["job"]
    return f"{job.batch}-{job.index + 1}-{job.label or 'item'}"


class JobContext:
    """What every job of one flow run shares. A plain class on purpose: Prefect walks dataclass and
    model arguments looking for futures, and this holds loop-bound objects and large maps."""

    def __init__(
        self, *, broker: SlotBroker, store: OutputStore, journal: JobJournal, batch_dir: str, timeouts: Timeouts,
        eligible: dict[str, tuple[str, ...]], recoverable: dict[str, JobRecord], versions: dict[str, str],
        input_policy: InputPolicy, warm_routing: bool, thumbnails: Thumbnails | None = None,
    ) -> None:  # fmt: skip
        self.broker = broker
        self.store = store
        self.journal = journal
        self.batch_dir = batch_dir
        self.timeouts = timeouts
        self.eligible = eligible
        self.recoverable = recoverable
        self.versions = versions
        self.input_policy = input_policy  # the run's: an API request's inputs stay confined at upload time too
        self.warm_routing = warm_routing
        self.thumbnails = thumbnails  # the contact sheet's tiles, made as images land
        self.in_flight = InFlight()  # what a server leaving the fleet hands back
        self._models: dict[str, frozenset[str]] = {}

    def models_of(self, job: JobSpec) -> frozenset[str]:
        """The model files `job`'s graph loads (none without warm routing); remembered per job."""
        if not self.warm_routing:
            return frozenset()
        if (models := self._models.get(job.job_key)) is None:
            models = self._models[job.job_key] = loaded_models(job.workflow)
        return models

    def next_job(self, queue: deque[JobSpec]) -> JobSpec:
        """The queue's next job, or (warm routing) one of the first `_LOOKAHEAD` whose models a server has loaded
        while no job for them waits in line: that server then takes a warm job rather than loading another model."""
        if self.warm_routing and (short := self.broker.models_short()):
            for position, job in enumerate(itertools.islice(queue, _LOOKAHEAD)):
                if self.models_of(job) & short:
                    del queue[position]
                    return job
        return queue.popleft()


@task(
    # cast: Prefect's protocol carries a classmethod no plain function has; it calls this with `parameters=`
    # How many retries and how far apart come from the settings, where the flow runs it (`flows/workers.drain`).
    name="render-image", task_run_name=cast(TaskRunNameCallbackWithParameters, task_run_name),
    retry_jitter_factor=0.5, retry_condition_fn=retry_if_retryable, cache_policy=NO_CACHE,
)  # fmt: skip
async def run_job(job: JobSpec, context: JobContext) -> JobResult:
    """Build, run and download one job, failing over to the next eligible server."""
    return await render(job, context, _attempt())


async def render(job: JobSpec, context: JobContext, attempt: int) -> JobResult:
    """One attempt at one job (a task run's, or one image's in a `render-images` task run)."""
    if attempt > 1:
        emit_item_event(job, "retrying", attempt=attempt)
    if (recovered := await _recover(job, context.recoverable.pop(job.key, None), context, attempt)) is not None:
        return recovered
    tried: dict[str, ComfyBatchError] = {}
    models = context.models_of(job)
    while True:
        try:
            eligible = context.eligible[job.key]  # read at each try: a server may have joined the fleet
            async with context.broker.slot(eligible, exclude=tried.keys(), models=models, key=job.key,
                                           deadline_s=context.timeouts.start_timeout_s) as slot:  # fmt: skip
                try:
                    return await _run_on(job, slot, context, attempt)
                except ComfyBatchError as exc:
                    if not exc.failover:
                        raise
                    tried[slot.server.name] = exc
                    if isinstance(exc, PromptMoved):
                        get_run_logger().info("#%d moved off %s: %s", job.index + 1, slot.server.name, exc)
                        continue
                    if isinstance(exc, _DOWN_ERRORS):
                        context.broker.mark_down(slot.server.name)
                    why = why_unreachable(exc) if isinstance(exc, _DOWN_ERRORS) else str(exc)  # words, not a repr
                    get_run_logger().warning("#%d failed on %s (%s); trying another server", job.index + 1,
                                             slot.server.name, why)  # fmt: skip
        except NoServerAvailable:
            raise FleetExhausted(job.job_key, list(tried.values())) from None


async def _run_on(job: JobSpec, slot: Slot, context: JobContext, attempt: int, *,
                  resume_prompt_id: str | None = None) -> JobResult:  # fmt: skip
    server = slot.server
    prompt_id = resume_prompt_id or new_prompt_id()
    # An adopted prompt may be running already: it is never moved.
    with context.in_flight.track(server.name, prompt_id, started=resume_prompt_id is not None) as tracked:
        # No `item.submitted`: the task run's own Running state says as much, and each event is work for the Prefect
        # server (its CPU per image is the fleet's limit at high rates). `item.running` names the server.
        async with session_for(server) as comfy:  # borrowed: nothing per job opens a connection
            result = await unless_moved(execute_job(
                comfy, job, store=context.store, journal=context.journal, batch_dir=context.batch_dir,
                timeouts=context.timeouts, attempt=attempt, resume_prompt_id=resume_prompt_id, lease_id=slot.lease_id,
                comfyui_version=context.versions.get(server.name), new_id=prompt_id,
                on_event=_progress_reporter(job, server.name, tracked), input_policy=context.input_policy,
            ), tracked, server=server.name)  # fmt: skip
    context.broker.mark_up(server.name)
    if context.thumbnails is not None:
        context.thumbnails.landed(context.store, result)
    _log_rendered(job, result)
    seconds = result.finished_at - result.started_at if result.finished_at and result.started_at else None
    emit_item_event(job, "done", server=server.name, prompt_id=result.prompt_id, seconds=seconds,
                    gpu_seconds=result.gpu_seconds, files=[file.uri for file in result.files])  # fmt: skip
    return result


async def _recover(job: JobSpec, record: JobRecord | None, context: JobContext, attempt: int) -> JobResult | None:
    """Finish the prompt a previous orchestrator submitted (found by its prompt_id) instead of re-rendering."""
    if record is None or record.server not in context.broker.servers or record.prompt_id is None:
        return None
    server, prompt_id = record.server, record.prompt_id
    try:
        async with _recovery_slot(context.broker, server, record.lease_id, context.timeouts) as slot:
            return await _run_on(job, slot, context, attempt, resume_prompt_id=prompt_id)
    except (NoServerAvailable, ComfyBatchError) as exc:
        # A prompt interrupted by the cancel that stopped the earlier run is rendered anew, not failed.
        if isinstance(exc, ComfyBatchError) and not exc.failover and not isinstance(exc, JobInterrupted):
            raise
        get_run_logger().warning("%s: could not recover prompt %s on %s (%s); rendering anew",
                                 job.job_key, prompt_id, server, exc)  # fmt: skip
        return None


@contextlib.asynccontextmanager
async def _recovery_slot(
    broker: SlotBroker, server: str, lease_id: str | None, timeouts: Timeouts
) -> AsyncIterator[Slot]:
    """The crashed run's own slot if its lease still lives, else a fresh one on the same server."""
    if lease_id is not None:
        with contextlib.suppress(NoServerAvailable):
            async with broker.adopt(server, lease_id) as slot:
                yield slot
                return
    async with broker.slot([server], deadline_s=timeouts.start_timeout_s) as slot:
        yield slot


def _log_rendered(job: JobSpec, result: JobResult) -> None:
    """One line a person reads on the task run's page: what was rendered, where, and into which file."""
    prompt = job.values.get("prompt")
    files = ", ".join(file.uri for file in result.files) or "no file"
    get_run_logger().info(
        "#%d prompt %s, seed %s: rendered on %s (prompt_id %s) into %s", job.index + 1,
        repr(prompt) if isinstance(prompt, str) else "(none)", job.seed if job.seed is not None else "(none)",
        result.server, result.prompt_id, files,
    )  # fmt: skip


def _progress_reporter(job: JobSpec, server: str, tracked: Tracked) -> EventHandler:
    throttle = ProgressThrottle()
    started = time.monotonic()

    def report(event: ComfyEvent) -> None:
        nonlocal started
        if event.type == "execution_start":
            tracked.started = True  # it finishes where it is, even if the server leaves the fleet
            started = time.monotonic()
            emit_item_event(job, "running", server=server)
        # Progress only once a prompt has run a while: "done" follows short ones at once, and every event is work
        # for the Prefect server, whose in-memory event queue drops messages when it falls behind.
        elif (
            (progress := event.progress) is not None
            and time.monotonic() - started >= throttle.interval_s
            and throttle.ready(final=progress[0] >= progress[1])
        ):
            emit_item_event(job, "progress", server=server, node=event.node, value=progress[0], max=progress[1])

    return report


def _attempt() -> int:
    context = TaskRunContext.get()
    return max(1, context.task_run.run_count) if context is not None else 1
