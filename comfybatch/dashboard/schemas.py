"""HTTP shapes of the dashboard API, named by action."""

from pydantic import BaseModel, Field, JsonValue

TERMINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "CRASHED"})  # a batch's run has ended


class BatchLinks(BaseModel):
    self: str
    items: str
    manifest: str
    events: str = Field(description="WebSocket of the batch's numbered events (`?after=N` resumes).")
    prefect_ui: str | None = None


class BatchStarted(BaseModel):
    """Answer to `POST /api/batches`: the batch is a Prefect flow run."""

    batch_id: str = Field(description="The flow run id.")
    name: str
    state: str
    links: BatchLinks


class BatchCounts(BaseModel):
    total: int | None = Field(0, description="None before the plan is stored when the request alone cannot say.")
    done: int = 0
    failed: int = 0
    cancelled: int = Field(0, description="Not rendered: the batch ended (cancel, stop, crash) before they finished.")
    pending: int | None = 0


class ServerProgress(BaseModel):
    done: int = 0
    failed: int = 0
    in_flight: int = 0


class BatchStatus(BatchStarted):
    """A batch with counts from its job journal."""

    state_name: str = ""
    state_at: str | None = Field(
        None, description="When the run entered `state` (ISO 8601): a client keeps the newer of it and a `run.*` event."
    )
    counts: BatchCounts = Field(default_factory=BatchCounts)
    submitted_by: str | None = None
    cancelled_by: str | None = None
    reason: str | None = Field(None, description="Why the batch ended other than COMPLETED, in Prefect's words.")
    servers: dict[str, ServerProgress] = Field(default_factory=dict, description="Progress per ComfyUI server.")
    eta_s: float | None = Field(None, description="Seconds left at the rate so far; none before the first image.")
    failures: list["ItemFailure"] = Field(default_factory=list, description="The first 20 failed items.")
    events_seq: int = Field(0, description="Events numbered so far; `after` for a stream that skips them.")
    planned: bool = Field(
        True, description="Counts come from the plan the flow stored; false before it is written (from the request)."
    )
    resumed_from: str | None = Field(None, description="The ended run of this batch that this run resumes.")
    resumed_as: str | None = Field(None, description="The run that resumed this ended one (it goes on there).")
    template: str | None = Field(None, description="The template's name; none for a graph sent inline.")
    gpu_seconds: float = Field(0.0, description="ComfyUI execution time summed over the batch's rendered images.")
    draining: list[str] = Field(
        default_factory=list, description="While the batch runs: servers being drained (no new prompts go there)."
    )


class ItemFailure(BaseModel):
    key: str
    index: int | None = None
    error: str


class BatchSummary(BaseModel):
    batch_id: str
    name: str
    state: str
    state_name: str
    created: str | None = None
    template: str | None = Field(None, description="The template's name; none for a graph sent inline.")
    submitted_by: str | None = None
    counts: BatchCounts | None = Field(None, description="From the stored plan and journal; none if unreadable.")
    duration_s: float | None = Field(None, description="Seconds from the run's start to its end (or to now).")
    resumed_from: str | None = None


class BatchList(BaseModel):
    batches: list[BatchSummary]
    limit: int
    offset: int


class ItemStatus(BaseModel):
    """One job of the batch: planned, then as its journal records it."""

    key: str
    index: int | None = None
    prompt: str | None = None
    seed: int | None = None
    state: str = Field(description="queued, submitted, done, failed or skipped.")
    server: str | None = None
    error: str | None = None
    files: int = 0
    image: str | None = Field(None, description="URL of the item's image, when it has one.")
    file: str | None = Field(None, description="The image's file name in the batch's folder.")
    media: str | None = Field(
        None, description="The media type `image` serves (image/webp, video/webm, audio/flac…), from its extension."
    )
    values: dict[str, JsonValue] | None = Field(None, description="Its bound parameters besides the prompt.")


class ItemList(BaseModel):
    items: list[ItemStatus]
    total: int
    limit: int
    offset: int
    planned: bool = Field(True, description="Listed from the stored plan; false before it is written (journal only).")


class WorkflowList(BaseModel):
    workflows: list[str]


class Health(BaseModel):
    ok: bool
    shim: str = "ok"
    prefect: str
    comfyui: dict[str, str]


class ServerStatus(BaseModel):
    """One fleet server: its config (never its token), health and load."""

    name: str
    display_name: str = Field(description="What people read: its configured display name, else its name.")
    url: str
    slots: int = Field(description="Its limit: prompts in flight at once.")
    health: str = Field(description="ok or unreachable.")
    reason: str | None = Field(None, description="Why it is unreachable.")
    queue_depth: int | None = Field(None, description="Running plus pending prompts in its ComfyUI queue.")
    in_flight: int = Field(0, description="Active slots of its `comfy:<name>` concurrency limit.")
    draining: bool = Field(False, description="Being drained (`comfybatch fleet drain`): no new prompts go to it.")
    last_error: str | None = Field(None, description="The last probe failure this dashboard saw, even if healthy now.")
    last_error_at: str | None = Field(None, description="When that was (ISO 8601, UTC).")


class ServerList(BaseModel):
    servers: list[ServerStatus]


class ValidationReport(BaseModel):
    """The fleet's dry run of a request: nothing rendered."""

    ok: bool = Field(description="Every job can run on some server.")
    total: int
    duplicates: int
    per_server: dict[str, int] = Field(description="Jobs each reachable server can run.")
    invalid: list[ItemFailure] = Field(description="Jobs no server can run, and why (the first 50).")
    plan: list[str]
    estimate_s: float | None = None


class Uploaded(BaseModel):
    """A stored upload: put `sheet` into a batch request, `image` into its `images`, or a zip's `images` as they are."""

    sheet: str | None = None
    rows: int | None = None
    columns: list[str] | None = None
    image: str | None = None
    sha256: str | None = None
    width: int | None = None
    height: int | None = None
    images: list[str] | None = Field(None, description="A zip's image files, stored one by one, in name order.")
