"""HTTP shapes of the dashboard API, named by action."""

from pydantic import BaseModel, Field


class BatchLinks(BaseModel):
    self: str
    items: str
    manifest: str
    prefect_ui: str | None = None


class BatchStarted(BaseModel):
    """Answer to `POST /api/batches`: the batch is a Prefect flow run."""

    batch_id: str = Field(description="The flow run id.")
    name: str
    state: str
    links: BatchLinks


class BatchCounts(BaseModel):
    total: int = 0
    done: int = 0
    failed: int = 0
    pending: int = 0


class BatchStatus(BatchStarted):
    """A batch with counts from its job journal."""

    state_name: str
    counts: BatchCounts
    submitted_by: str | None = None


class BatchSummary(BaseModel):
    batch_id: str
    name: str
    state: str
    state_name: str
    created: str | None = None


class BatchList(BaseModel):
    batches: list[BatchSummary]
    limit: int
    offset: int


class ItemStatus(BaseModel):
    """One job of the batch, as its journal records it."""

    key: str
    state: str = Field(description="submitted, done, failed or skipped.")
    server: str | None = None
    error: str | None = None
    files: int = 0
    image: str | None = Field(None, description="URL of the item's image, when it has one.")


class ItemList(BaseModel):
    items: list[ItemStatus]
    total: int
    limit: int
    offset: int


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
    url: str
    slots: int = Field(description="Its limit: prompts in flight at once.")
    health: str = Field(description="ok or unreachable.")
    reason: str | None = Field(None, description="Why it is unreachable.")
    queue_depth: int | None = Field(None, description="Running plus pending prompts in its ComfyUI queue.")
    in_flight: int = Field(0, description="Active slots of its `comfy:<name>` concurrency limit.")


class ServerList(BaseModel):
    servers: list[ServerStatus]
