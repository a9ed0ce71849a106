"""What the dashboard answers, as the SDK reads it; unknown fields are ignored so newer servers still parse."""

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})


class _Answer(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class BatchLinks(_Answer):
    self: str
    items: str
    manifest: str
    events: str
    prefect_ui: str | None = None


class BatchStarted(_Answer):
    """A batch the dashboard started (or cancelled): pass it, or its `batch_id`, to the other methods."""

    batch_id: str = Field(description="The flow run id.")
    name: str
    state: str
    links: BatchLinks


class BatchCounts(_Answer):
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0


class ServerProgress(_Answer):
    done: int = 0
    failed: int = 0
    in_flight: int = 0


class ItemFailure(_Answer):
    key: str
    index: int | None = None
    error: str


class BatchStatus(BatchStarted):
    """A batch's state (SCHEDULED … COMPLETED, FAILED, CANCELLED, CRASHED), counts, progress and first failures."""

    state_name: str = ""
    counts: BatchCounts = Field(default_factory=BatchCounts)
    submitted_by: str | None = None
    cancelled_by: str | None = None
    servers: dict[str, ServerProgress] = Field(default_factory=dict)
    eta_s: float | None = None
    failures: list[ItemFailure] = Field(default_factory=list)
    events_seq: int = 0

    @property
    def finished(self) -> bool:
        """The batch's run has ended, successfully or not."""
        return self.state in TERMINAL_STATES

    @property
    def succeeded(self) -> bool:
        """The run completed and no item failed."""
        return self.state == "COMPLETED" and self.counts.failed == 0


class BatchSummary(_Answer):
    batch_id: str
    name: str
    state: str
    state_name: str = ""
    created: str | None = None


class ItemStatus(_Answer):
    """One image job of a batch: `state` is queued, submitted, done, failed or skipped."""

    key: str
    index: int | None = None
    prompt: str | None = None
    seed: int | None = None
    state: str
    server: str | None = None
    error: str | None = None
    files: int = 0
    image: str | None = Field(None, description="Path of the item's image on the dashboard, once it has one.")


class ValidationReport(_Answer):
    """The fleet's dry run of a request: nothing rendered."""

    ok: bool
    total: int
    duplicates: int = 0
    per_server: dict[str, int] = Field(default_factory=dict)
    invalid: list[ItemFailure] = Field(default_factory=list)
    plan: list[str] = Field(default_factory=list)
    estimate_s: float | None = None


class Uploaded(_Answer):
    """A sheet stored by the dashboard: its `sheet` goes into a batch request."""

    sheet: str
    rows: int
    columns: list[str]


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
