"""Python SDK of the comfybatch dashboard API: `ComfyBatchClient` (blocking) and `AsyncComfyBatchClient`.

Needs only httpx, websockets, pydantic and anyio (the sync client's loop thread): importing it loads neither
Prefect nor FastAPI.
"""

from comfybatch.client._request import DEFAULT_WORKFLOW
from comfybatch.client.async_client import AsyncComfyBatchClient, BatchRef
from comfybatch.client.errors import (
    ApiError,
    AuthenticationFailed,
    BatchFailed,
    BatchRejected,
    BatchWaitTimeout,
    DashboardUnavailable,
    NotFound,
    QuotaExceeded,
    RequestProblem,
    UnexpectedResponse,
)
from comfybatch.client.models import (
    BatchEvent,
    BatchStarted,
    BatchStatus,
    BatchSummary,
    ItemStatus,
    Uploaded,
    ValidationReport,
)
from comfybatch.client.sync_client import ComfyBatchClient

__all__ = [
    "DEFAULT_WORKFLOW",
    "ApiError",
    "AsyncComfyBatchClient",
    "AuthenticationFailed",
    "BatchEvent",
    "BatchFailed",
    "BatchRef",
    "BatchRejected",
    "BatchStarted",
    "BatchStatus",
    "BatchSummary",
    "BatchWaitTimeout",
    "ComfyBatchClient",
    "DashboardUnavailable",
    "ItemStatus",
    "NotFound",
    "QuotaExceeded",
    "RequestProblem",
    "UnexpectedResponse",
    "Uploaded",
    "ValidationReport",
]
