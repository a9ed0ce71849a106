"""Every error comfybatch raises, with two flags that drive recovery.

`failover`: another server may succeed now.  `retryable`: trying again later may succeed.
`http_status`: what the dashboard's API answers when the error reaches it (400 unless noted).

    ComfyBatchError
    ├── ConfigError                bad settings or missing configuration
    │   └── PlatformUnavailable    deployment not served, no server reachable       retryable, 503
    ├── BatchRequestError          a request or sheet is wrong (names row, column)
    │   ├── IdempotencyKeyReused   the key created a batch from another body        422
    │   ├── RequestTooLarge        larger than a run's parameters can hold          413
    │   └── WebhookRefused         malformed, private or unsigned webhook           422
    ├── WorkflowError              the workflow is wrong (no server will run it)
    │   ├── WorkflowFormatError    not JSON, not a graph, cannot be converted
    │   ├── BindingError           unknown or unbindable parameter
    │   └── WorkflowRejected       ComfyUI (or preflight) rejected nodes or inputs
    ├── ServerError                one server could not do the work                 failover, retryable, 502
    │   ├── ServerUnavailable      refused, timed out, 5xx, socket closed           failover, retryable
    │   ├── ServerIncompatible     lacks a model / node class                       failover
    │   ├── ServerProtocolError    unexpected answer                                failover
    │   ├── JobLost                in neither /queue nor /history                   failover, retryable
    │   ├── PromptMoved            its server left the fleet before it ran          failover, retryable
    │   └── JobTimeout             never started, or silent too long                failover, retryable
    ├── JobFailed                  execution_error: the graph raised at run time    failover, retryable if OOM
    ├── JobInterrupted             execution_interrupted
    ├── DownloadError              GET /view failed                                 retryable
    ├── StorageError               output storage failed                            retryable, 503
    │   └── UnsafePath             a relative path escapes or is malformed          not retryable, 400
    ├── FleetExhausted             every eligible server failed a job               retryable if a cause is
    ├── BatchIncomplete            some jobs of a batch failed (record written)
    ├── BatchConflict              the batch's name or state forbids this           409
    ├── BatchNotFound              the dashboard knows no such batch or item        404
    └── WebhookUndelivered         a webhook attempt got no 2xx answer              retryable (not after 410)

The problems an error carries, each with its place: `RequestProblem` (field, row, column) on `BatchRequestError`,
`NodeProblem` (node, input) on `WorkflowError` and `ServerIncompatible`.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING

from comfybatch.problems import node_place, node_problem, request_problem

if TYPE_CHECKING:  # models imports this module
    from comfybatch.models import BatchReport


class ComfyBatchError(Exception):
    """Base of every comfybatch error."""

    failover: bool = False
    retryable: bool = False
    http_status: int = 400


def is_retryable(exc: BaseException) -> bool:
    """The one retry rule. Unknown exceptions are bugs and are never retried."""
    return isinstance(exc, ComfyBatchError) and exc.retryable


class ConfigError(ComfyBatchError):
    """Raised when settings, a server URL or another piece of configuration is unusable."""


class PlatformUnavailable(ConfigError):
    """Raised when the platform cannot take work now: the deployment is not served, no server answers."""

    retryable = True
    http_status = 503


@dataclass(frozen=True)
class RequestProblem:
    """One thing wrong with a batch request: which field, sheet row and column."""

    message: str
    field: str | None = None  # request field, e.g. "sweep.axes.width"
    row: int | None = None  # spreadsheet row number as a user sees it (header = row 1)
    column: str | None = None

    def __str__(self) -> str:
        return request_problem(self.message, field=self.field, row=self.row, column=self.column).message


class BatchRequestError(ComfyBatchError):
    """Raised when a batch request, sheet or sweep is invalid, before any GPU time is spent."""

    def __init__(self, message: str, *, problems: tuple[RequestProblem, ...] = ()) -> None:
        detail = "".join(f"\n  - {problem}" for problem in problems)
        super().__init__(message + detail)
        self.summary = message
        self.problems = problems


class IdempotencyKeyReused(BatchRequestError):
    """Raised when an Idempotency-Key already created a batch from a different request body."""

    http_status = 422


class RequestTooLarge(BatchRequestError):
    """Raised when a request body or upload is over its size limit, or a batch request is larger than the platform
    can store as run parameters."""

    http_status = 413


class WebhookRefused(BatchRequestError):
    """Raised when a webhook URL is malformed, does not resolve, or points at a loopback, private or link-local
    address (SSRF) while `COMFYBATCH_WEBHOOK_ALLOW_PRIVATE` is off; also when no signing secret is set."""

    http_status = 422


@dataclass(frozen=True)
class NodeProblem:
    """One thing wrong with one node (and, where known, one input) of a workflow."""

    node_id: str
    message: str
    class_type: str | None = None
    input_name: str | None = None
    kind: str = "invalid"  # ComfyUI's error type, e.g. value_not_in_list
    title: str | None = None  # the node's title in the graph (`_meta.title`), when it has one

    def __str__(self) -> str:
        return node_problem(self.message, node_id=self.node_id, class_type=self.class_type,
                            input_name=self.input_name, title=self.title).message  # fmt: skip


class WorkflowError(ComfyBatchError):
    """Raised when the workflow is wrong in a way no server or retry can fix."""

    def __init__(self, message: str, *, problems: tuple[NodeProblem, ...] = ()) -> None:
        detail = "".join(f"\n  - {problem}" for problem in problems)
        super().__init__(message + detail)
        self.summary = message
        self.problems = problems


class WorkflowFormatError(WorkflowError):
    """Raised when a workflow is not JSON, not a graph, or cannot be converted to API format."""


class BindingError(WorkflowError):
    """Raised when a parameter name is unknown or cannot be bound onto the graph."""


class WorkflowRejected(WorkflowError):
    """Raised when ComfyUI's validation (or our preflight) rejects nodes or inputs."""


class ServerError(ComfyBatchError):
    """A single ComfyUI server could not do the work; another one might."""

    failover = True
    retryable = True
    http_status = 502

    def __init__(self, message: str, *, server: str, prompt_id: str | None = None) -> None:
        super().__init__(f"[{server}] {message}")
        self.server = server
        self.prompt_id = prompt_id


class ServerUnavailable(ServerError):
    """Raised when a server refuses, times out, answers 5xx or drops its socket."""


class ServerIncompatible(ServerError):
    """Raised when a server lacks a model, LoRA or node class that the workflow uses."""

    retryable = False  # waiting will not install the model

    def __init__(self, message: str, *, server: str, problems: tuple[NodeProblem, ...] = ()) -> None:
        super().__init__(message + "".join(f"\n  - {p}" for p in problems), server=server)
        self.problems = problems


class ServerProtocolError(ServerError):
    """Raised when a server answers something this client does not understand."""

    retryable = False


class JobLost(ServerError):
    """Raised when a submitted prompt is in neither `/queue` nor `/history` (server restarted)."""


class PromptMoved(ServerError):
    """Raised when a prompt's server left the fleet while the prompt still waited in its queue: it was taken off
    that queue, and runs on another server."""


class JobTimeout(ServerError):
    """Raised when a prompt never starts within the start timeout, or goes silent too long."""


class JobFailed(ComfyBatchError):
    """Raised when the graph raised at run time (`execution_error`).

    Neither failover nor retryable, except out-of-memory errors: another server may have the memory,
    and this one may have it again once it unloads models.
    """

    def __init__(
        self, message: str, *, server: str, prompt_id: str, node_id: str | None = None,
        node_type: str | None = None, exception_type: str | None = None,
    ) -> None:  # fmt: skip
        where = f" in {node_place(node_id, node_type)}" if node_id else ""
        super().__init__(f"[{server}] prompt {prompt_id} failed{where}: {exception_type}: {message}")
        self.server = server
        self.prompt_id = prompt_id
        self.node_id = node_id
        self.node_type = node_type
        self.exception_type = exception_type
        self.exception_message = message
        self.failover = self.retryable = (exception_type or "").endswith("OutOfMemoryError")


class JobInterrupted(ComfyBatchError):
    """Raised when a prompt was interrupted (`execution_interrupted`)."""

    def __init__(self, *, server: str, prompt_id: str, node_id: str | None = None) -> None:
        where = f" at node {node_id}" if node_id else ""
        super().__init__(f"[{server}] prompt {prompt_id} was interrupted{where}")
        self.server = server
        self.prompt_id = prompt_id
        self.node_id = node_id


class DownloadError(ComfyBatchError):
    """Raised when an output could not be fetched (`GET /view`)."""

    retryable = True

    def __init__(self, message: str, *, server: str) -> None:
        super().__init__(f"[{server}] {message}")
        self.server = server


class StorageError(ComfyBatchError):
    """Raised when the output store cannot read or write a file (disk, permissions, network)."""

    retryable = True
    http_status = 503


class UnsafePath(StorageError):
    """Raised when a store-relative path is absolute, has `..`, backslashes or control characters."""

    retryable = False  # the same path is rejected every time
    http_status = 400


class FleetExhausted(ComfyBatchError):
    """Raised when every server that could run a job has failed it."""

    def __init__(self, job: str, causes: list[ComfyBatchError]) -> None:
        detail = "".join(f"\n  - {cause}" for cause in causes) or " (no server could take it)"
        super().__init__(f"{job}: every eligible server failed{detail}")
        self.causes = causes
        self.retryable = any(cause.retryable for cause in causes) or not causes


class BatchIncomplete(ComfyBatchError):
    """Raised at the end of a batch run in which some jobs failed; everything produced is kept."""

    def __init__(self, message: str, *, report: "BatchReport | None") -> None:
        super().__init__(message)
        self.report = report


class WebhookUndelivered(ComfyBatchError):
    """Raised when one webhook attempt got no 2xx answer (refused, timed out, 3xx, 4xx, 5xx); 410 Gone is final."""

    retryable = True

    def __init__(
        self, message: str, *, retryable: bool = True, retry_after_s: float | None = None,
        status_code: int | None = None,
    ) -> None:  # fmt: skip
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s  # the receiver's Retry-After, if it sent one
        self.status_code = status_code  # the receiver's answer; None when there was none


class BatchConflict(ComfyBatchError):
    """Raised when a batch's name or state forbids the request: the name holds another request, the batch is
    running elsewhere, or it has already ended."""

    http_status = 409


class BatchNotFound(ComfyBatchError):
    """Raised when the dashboard is asked for a batch, item or file that the batch does not have."""

    http_status = 404
