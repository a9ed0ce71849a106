"""Adaptive task granularity: one task run per image while the Prefect server records them as fast as the fleet
renders, one task run per k images above that.

On SQLite a Prefect server records some tens of task runs a second (`bench/fleet.py --scenario 2`); a fleet of
fast prompts renders more. Then k images go into one `render-images` task run, each image still on its own:
its own slot, failover, journal record, events and retries (by stamina, with the task's own rule and back-off).
"""

import math
import time
from collections import deque

import stamina
from prefect import task
from prefect.cache_policies import NO_CACHE

from comfybatch.errors import is_retryable
from comfybatch.models import JobResult, JobSpec
from comfybatch.tasks.events import emit_item_event
from comfybatch.tasks.job import JobContext, render

_WINDOW_S = 5.0  # images finished in this window make the fleet's rate
_MAX_GROUP = 32  # a group's images are rendered one after another by one worker: keep each worker's turn short


class Granularity:
    """How many images the next task run takes: ceil(fleet rate / the rate Prefect records task runs at)."""

    def __init__(self, task_runs_per_s: float) -> None:
        self.task_runs_per_s = task_runs_per_s
        self._finished: deque[float] = deque()

    def finished(self, images: int = 1) -> None:
        now = time.monotonic()
        self._finished.extend([now] * images)
        while self._finished and self._finished[0] < now - _WINDOW_S:
            self._finished.popleft()

    def size(self) -> int:
        """1 while the fleet's image rate is within what Prefect records (or grouping is off); k above it."""
        if self.task_runs_per_s <= 0 or not self._finished:
            return 1
        rate = len(self._finished) / _WINDOW_S
        return max(1, min(_MAX_GROUP, math.ceil(rate / self.task_runs_per_s)))


def group_name(jobs: list[JobSpec]) -> str:
    """`<batch>-11..14`: which images the task run rendered, numbered from 1 as a single image's task run is."""
    return f"{jobs[0].batch}-{jobs[0].index + 1}..{jobs[-1].index + 1}"


@task(name="render-images", task_run_name="{name}", cache_policy=NO_CACHE)
async def render_images(
    jobs: list[JobSpec], context: JobContext, *, name: str, retries: int, backoff_s: float
) -> list[JobResult]:  # fmt: skip
    """Each image in turn, each with its own retries; a failed image is recorded as failed, the others go on.
    `name` is the task run's (`group_name`)."""
    results: list[JobResult] = []
    for job in jobs:
        try:
            results.append(await _with_retries(job, context, retries=retries, backoff_s=backoff_s))
        except Exception as exc:  # the image failed for good: the same record a failed task run leaves
            results.append(JobResult(job=job, status="failed", error=str(exc), finished_at=time.time()))
            emit_item_event(job, "failed", error=str(exc))
    return results


async def _with_retries(job: JobSpec, context: JobContext, *, retries: int, backoff_s: float) -> JobResult:
    attempt = 0
    async for retrying in stamina.retry_context(on=is_retryable, attempts=retries + 1, timeout=None,
                                                wait_initial=backoff_s, wait_exp_base=2.0,
                                                wait_max=max(backoff_s, 1.0) * 2**retries):  # fmt: skip
        with retrying:
            attempt += 1
            return await render(job, context, attempt)
    raise AssertionError("unreachable")  # pragma: no cover
