"""GPU-seconds per API key over a period, from the journals of the batches the key submitted; the daily quota."""

import math
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from uuid import UUID

from fastapi import HTTPException, status
from pydantic import BaseModel, ConfigDict, Field

from comfybatch.dashboard.launcher import Launcher
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


async def key_usage(launcher: Launcher, key: str, since: datetime, until: datetime) -> KeyUsage:
    """Sum the GPU-seconds of images the key's batches finished in [since, until].

    An image counts for the run that rendered it (finished while that run ran), once: a resumed batch's earlier
    images are not counted again.
    """
    counted: set[tuple[str, str]] = set()
    servers: dict[str, float] = defaultdict(float)
    batches: set[UUID] = set()
    now = datetime.now(UTC)
    for run in await launcher.key_runs(key, since, until):
        try:
            spec = launcher.spec_of(run)
        except BatchNotFound:
            continue
        assert run.start_time is not None  # key_runs gives started runs only
        begin = max(since.timestamp(), run.start_time.timestamp() - _CLOCK_SLACK_S)
        end = min(until.timestamp(), (run.end_time or now).timestamp() + _CLOCK_SLACK_S)
        folder = launcher.store_of(spec).uri(await launcher.batch_dir(spec, run.id))
        for record in (await launcher.records(spec, run.id)).values():
            result = record.result
            if result is None or result.status != "done" or result.gpu_seconds is None or result.finished_at is None:
                continue
            if not begin <= result.finished_at <= end or (folder, record.key) in counted:
                continue
            counted.add((folder, record.key))
            servers[result.server or ""] += result.gpu_seconds
            batches.add(run.id)
    return KeyUsage(key=key, since=since, until=until, gpu_seconds=round(sum(servers.values()), 3),
                    images=len(counted), batches=len(batches),
                    servers={name: round(seconds, 3) for name, seconds in sorted(servers.items())})  # fmt: skip


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
