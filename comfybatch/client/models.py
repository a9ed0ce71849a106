"""What the dashboard answers: its own HTTP shapes (pydantic only, no FastAPI or Prefect), plus the SDK's helpers.

Unknown fields are ignored (pydantic's default), so answers from newer servers still parse.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

from comfybatch.dashboard import schemas
from comfybatch.dashboard.schemas import (
    TERMINAL_STATES,
    BatchCounts,
    BatchLinks,
    BatchStarted,
    BatchSummary,
    ItemFailure,
    ItemStatus,
    ServerProgress,
    Uploaded,
    ValidationReport,
)

__all__ = [
    "BatchCounts", "BatchEvent", "BatchLinks", "BatchStarted", "BatchStatus", "BatchSummary", "ItemFailure",
    "ItemStatus", "ServerProgress", "Uploaded", "ValidationReport",
]  # fmt: skip


class BatchStatus(schemas.BatchStatus):
    """A batch's state (SCHEDULED … COMPLETED, FAILED, CANCELLED, CRASHED), counts, progress and first failures."""

    @property
    def finished(self) -> bool:
        """The batch's run has ended, successfully or not."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """The run completed and no item failed."""
        return self.state == "COMPLETED" and self.counts.failed == 0


class BatchEvent(BaseModel):
    """One numbered event of a batch: `item.<state>`, `batch.<state>` or `run.<state>`, plus its payload.

    Payload fields other than these (e.g. `server`, `error`) are attributes too, through `model_extra`.
    """

    model_config = ConfigDict(frozen=True, extra="allow")

    seq: int
    occurred: str
    type: str
    key: str | None = None
    state: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The fields beyond `seq`, `occurred` and `type`."""
        return {"key": self.key, "state": self.state, **(self.model_extra or {})}

    @property
    def ends_run(self) -> bool:
        """The batch's run reached a terminal state: nothing but late stragglers follows."""
        return self.type.startswith("run.") and (self.state or "").upper() in TERMINAL_STATES
