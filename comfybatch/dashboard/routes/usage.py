"""`/api/usage`: the calling key's GPU-seconds over a period."""

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query

from comfybatch.dashboard.deps import KeyName, LauncherDep
from comfybatch.dashboard.usage import KeyUsage, key_usage
from comfybatch.errors import BatchRequestError, RequestProblem

router = APIRouter(prefix="/api", tags=["usage"])


@router.get("/usage", response_model_by_alias=True)
async def get_usage(
    launcher: LauncherDep,
    key_name: KeyName,
    since: Annotated[
        datetime | None, Query(alias="from", description="Start (ISO 8601); today 00:00 UTC if left out.")
    ] = None,
    until: Annotated[datetime | None, Query(alias="to", description="End (ISO 8601); now if left out.")] = None,
) -> KeyUsage:
    """GPU-seconds (ComfyUI's execution time) of the images this key's batches rendered from `from` to `to`."""
    now = datetime.now(UTC)
    until = _utc(until) if until is not None else now
    since = _utc(since) if since is not None else now.replace(hour=0, minute=0, second=0, microsecond=0)
    if since > until:
        raise BatchRequestError("this usage period is empty", problems=(RequestProblem(
            f"{since.isoformat()} is after `to` ({until.isoformat()})", field="from"),))  # fmt: skip
    return await key_usage(launcher, key_name, since, until)


def _utc(moment: datetime) -> datetime:
    """A time without a zone is read as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
