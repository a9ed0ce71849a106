"""GPU-seconds per API key over a period, from the journals of the batches the key submitted; the daily quota."""

import math
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from uuid import UUID

from cachetools import LRUCache
from fastapi import HTTPException, status
from prefect.client.schemas.objects import FlowRun
from pydantic import BaseModel, ConfigDict, Field

from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.schemas import TERMINAL_STATES
from comfybatch.errors import BatchNotFound

_CLOCK_SLACK_S = 5.0  # the run's times are the Prefect server's, a record's finish the worker's


class KeyUsage(BaseModel):
    """GPU-seconds one API key's batches used in a period (images rendered in it, by ComfyUI's own clock)."""

    model_config = ConfigDict(populate_by_name=True)

    key: str = Field(description="The API key's name.")
    since: datetime = Field(alias="from")
    until: datetime = Field(alias="to")
    gpu_seconds: float = Field(description="ComfyUI execution time of the images rendered in the period.")
    images: int = Field(description="Images rendered in the period.")
    batches: int = Field(description="Batches that rendered them.")
    servers: dict[str, float] = Field(default_factory=dict, description="GPU-seconds per ComfyUI server.")


@dataclass(frozen=True)
class _Rendered:
    """One image a run rendered: where (batch folder and item key, to count it once), when, on which server, for how
    long."""

    folder: str
    key: str
    finished_at: float
    server: str
    gpu_seconds: float


# What each ended run rendered, by execution: its journal no longer changes for it until it runs again in place
# (Prefect's Retry; a crashed run rescheduled), so a quota check reads it once.
_ENDED_RUNS: LRUCache[tuple[UUID, int], list[_Rendered]] = LRUCache(maxsize=4096)


async def key_usage(launcher: Launcher, key: str, since: datetime, until: datetime) -> KeyUsage:
    """Sum the GPU-seconds of images the key's batches finished in [since, until].

    An image counts for the run that rendered it (finished while that run ran), once: a resumed batch's earlier
    images are not counted again.
    """
    counted: set[tuple[str, str]] = set()
    servers: dict[str, float] = defaultdict(float)
    batches: set[UUID] = set()
    for run in await launcher.key_runs(key, since, until):
        for image in await _rendered_by(launcher, run):
            if since.timestamp() <= image.finished_at <= until.timestamp() and (image.folder, image.key) not in counted:
                counted.add((image.folder, image.key))
                servers[image.server] += image.gpu_seconds
                batches.add(run.id)
    return KeyUsage(key=key, since=since, until=until, gpu_seconds=round(sum(servers.values()), 3),
                    images=len(counted), batches=len(batches),
                    servers={name: round(seconds, 3) for name, seconds in sorted(servers.items())})  # fmt: skip


async def _rendered_by(launcher: Launcher, run: FlowRun) -> list[_Rendered]:
    """The images `run` rendered: done records of its batch that finished while it ran."""
    if (known := _ENDED_RUNS.get((run.id, run.run_count))) is not None:
        return known
    try:
        spec = launcher.spec_of(run)
    except BatchNotFound:
        return []
    assert run.start_time is not None  # key_runs gives started runs only
    begin = run.start_time.timestamp() - _CLOCK_SLACK_S
    end = (run.end_time or datetime.now(UTC)).timestamp() + _CLOCK_SLACK_S
    folder = launcher.store_of(spec).uri(await launcher.batch_dir(spec, run.id))
    rendered = [
        _Rendered(folder, key, result.finished_at, result.server or "", result.gpu_seconds)
        for key, record in (await launcher.records(spec, run)).items()
        if (result := record.result) is not None and result.status == "done" and result.gpu_seconds is not None
        and result.finished_at is not None and begin <= result.finished_at <= end
    ]  # fmt: skip
    if run.end_time is not None and run.state_type is not None and run.state_type.value in TERMINAL_STATES:
        _ENDED_RUNS[run.id, run.run_count] = rendered
    return rendered


async def check_daily_quota(launcher: Launcher, key: str, quota_s: float | None) -> None:
    """Refuse a new batch once the key has used its daily GPU-seconds (UTC day).

    Raises:
        HTTPException 429 naming the numbers, with Retry-After until midnight UTC.
    """
    if quota_s is None:
        return
    now = datetime.now(UTC)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    used = (await key_usage(launcher, key, midnight, now)).gpu_seconds
    if used >= quota_s:
        retry_after = math.ceil((midnight + timedelta(days=1) - now).total_seconds())
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"key {key!r} has used {used:,.1f} GPU-seconds today (UTC), at or over its daily quota of "
            f"{quota_s:,.1f} GPU-seconds; new batches are taken again after midnight UTC",
            headers={"Retry-After": str(retry_after)},
        )
