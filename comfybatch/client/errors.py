"""Errors of the SDK: the dashboard's answers mapped onto comfybatch's one error tree.

ComfyBatchError
└── ApiError                                 the dashboard refused a request or could not be reached
    ├── AuthenticationFailed (ConfigError)   401/403, or a WebSocket closed with 4401
    ├── BatchRejected (BatchRequestError)    400/409/413/415/422: names each field, row and column
    ├── NotFound (BatchNotFound)             404, or a WebSocket closed with 4404
    ├── QuotaExceeded                        429: the key has too many images queued     retryable
    ├── DashboardUnavailable                 refused, timed out, 502/503/504, stream lost  retryable
    └── UnexpectedResponse                   any other status, or a body the SDK cannot read
BatchFailed (BatchIncomplete)                `wait_for_batch`: a batch ended other than COMPLETED
BatchWaitTimeout (TimeoutError)              `wait_for_batch`: still running at the deadline
"""

from typing import TYPE_CHECKING

from comfybatch.errors import BatchIncomplete, BatchNotFound, BatchRequestError, ComfyBatchError, ConfigError
from comfybatch.errors import RequestProblem as RequestProblem

if TYPE_CHECKING:
    from comfybatch.client.models import BatchStatus


class ApiError(ComfyBatchError):
    """Raised when the dashboard refused a request or could not be reached.

    `detail` is the server's own message; `status_code` is None when no answer came.
    """

    def __init__(self, detail: str, *, request: str, status_code: int | None = None) -> None:
        status = f" -> {status_code}" if status_code is not None else ""
        super().__init__(f"{request}{status}: {detail}")
        self.detail = detail
        self.request = request
        self.status_code = status_code


class AuthenticationFailed(ApiError, ConfigError):
    """Raised when the API key is missing or wrong (HTTP 401/403, WebSocket close 4401)."""


class BatchRejected(ApiError, BatchRequestError):
    """Raised when the dashboard refuses a batch request or sheet; `problems` name each field, row and column."""

    def __init__(
        self, detail: str, *, request: str, status_code: int, problems: tuple[RequestProblem, ...] = ()
    ) -> None:
        BatchRequestError.__init__(self, f"{request} -> {status_code}: {detail}", problems=problems)
        self.detail = detail
        self.request = request
        self.status_code = status_code


class NotFound(ApiError, BatchNotFound):
    """Raised when the dashboard has no such batch, item, image or manifest (HTTP 404, WebSocket close 4404)."""


class QuotaExceeded(ApiError):
    """Raised when the key has too many images queued for this batch (HTTP 429)."""

    retryable = True  # once a batch of this key finishes


class DashboardUnavailable(ApiError):
    """Raised when the dashboard refuses, times out, answers 502/503/504 or drops the event stream for good."""

    retryable = True


class UnexpectedResponse(ApiError):
    """Raised on a status the API does not document (500 included) or a body the SDK cannot read."""


class BatchFailed(BatchIncomplete):
    """Raised by `wait_for_batch` when a batch ended FAILED, CRASHED or CANCELLED, or with failed items.

    `statuses` holds the final status of every such batch; their `reason` says why it ended (who cancelled, the
    first failure, "cancelled by comfybatch stop: …") and their `failures` name the items and why.
    """

    def __init__(self, statuses: "list[BatchStatus]") -> None:
        lines = []
        for status in statuses:
            total = "?" if status.counts.total is None else status.counts.total  # the flow ended before its plan
            lines.append(f"batch {status.name} ({status.batch_id}) ended {status.state}: "
                         f"{status.counts.failed} of {total} item(s) failed, "
                         f"{status.counts.cancelled} not rendered")  # fmt: skip
            if status.reason:
                lines.append(f"  why: {status.reason}")
            lines.extend(f"  - item {f.index if f.index is not None else '?'} ({f.key}): {f.error}"
                         for f in status.failures)  # fmt: skip
        super().__init__("\n".join(lines), report=None)  # no flow's BatchReport here: `statuses` says it all
        self.statuses = statuses


class BatchWaitTimeout(ComfyBatchError, TimeoutError):
    """Raised by `wait_for_batch` when a batch is still running at the deadline; `status` is the last one read."""

    def __init__(self, message: str, *, status: "BatchStatus") -> None:
        super().__init__(message)
        self.status = status
