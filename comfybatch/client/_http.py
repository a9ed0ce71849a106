"""Map the dashboard's HTTP answers onto the SDK's errors (`detail` and `problems` kept, no body dumps)."""

from typing import Any

import httpx

from comfybatch.client.errors import (
    ApiError,
    AuthenticationFailed,
    BatchRejected,
    DashboardUnavailable,
    NotFound,
    QuotaExceeded,
    RequestProblem,
    UnexpectedResponse,
)

_REJECTED = frozenset({400, 409, 413, 415, 422})
_BY_STATUS: dict[int, type[ApiError]] = {
    401: AuthenticationFailed, 403: AuthenticationFailed, 404: NotFound, 429: QuotaExceeded,
    502: DashboardUnavailable, 503: DashboardUnavailable, 504: DashboardUnavailable,
}  # fmt: skip


def error_for(response: httpx.Response, request: str, *, secret: str | None) -> ApiError:
    """The typed error for a non-2xx answer, with the server's `detail` (the API key masked if echoed)."""
    detail, problems = _detail_of(response)
    if secret:
        detail = detail.replace(secret, "***")
        problems = tuple(RequestProblem(p.message.replace(secret, "***"), p.field, p.row, p.column) for p in problems)
    status = response.status_code
    if status in _REJECTED:
        return BatchRejected(detail, request=request, status_code=status, problems=problems)
    return _BY_STATUS.get(status, UnexpectedResponse)(detail, request=request, status_code=status)


def _detail_of(response: httpx.Response) -> tuple[str, tuple[RequestProblem, ...]]:
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or "detail" not in body:
        # A proxy's error page: its reason and what came, never the body (it may be a page or a traceback).
        media = response.headers.get("content-type", "").split(";")[0] or "no content type"
        return f"{response.reason_phrase or 'error'} ({media}, {len(response.content)} bytes, not JSON)", ()
    detail = body["detail"]
    # `reason` is the sentence without the field, row or column that RequestProblem names again when printed.
    problems = tuple(
        RequestProblem(
            str(p.get("reason") or p.get("message", "")), field=p.get("field"), row=p.get("row"), column=p.get("column")
        )
        for p in body.get("problems") or []
        if isinstance(p, dict)
    )
    if isinstance(detail, list) and problems:  # a request the model refused, in the dashboard's words
        return "the request does not fit the batch request model", problems
    if isinstance(detail, list):  # FastAPI's request validation: [{loc: ["body", field, ...], msg, type}]
        problems = tuple(
            RequestProblem(str(error.get("msg", "invalid")), field=".".join(map(str, error.get("loc", [])[1:])) or None)
            for error in detail
            if isinstance(error, dict)
        )
        return "the request does not fit the batch request model", problems
    return str(detail), problems
