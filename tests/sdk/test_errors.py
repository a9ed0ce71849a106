"""The SDK against `httpx.MockTransport`: answers a real dashboard cannot be made to give (proxy 503s, 429, 500
pages, echoed secrets), request bodies and the shape of the models."""

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfybatch.client import (
    AsyncComfyBatchClient,
    BatchFailed,
    BatchRejected,
    BatchWaitTimeout,
    ComfyBatchClient,
    DashboardUnavailable,
    QuotaExceeded,
    UnexpectedResponse,
)
from comfybatch.errors import BatchRequestError, ComfyBatchError, is_retryable
from comfybatch.models import BATCH_NAME_PATTERN, BatchSpec

pytestmark = pytest.mark.anyio
KEY = "sk-secret-0123456789"
BATCH_ID = "6f1c2d3e-0000-4000-8000-000000000001"
LINKS = {"self": "/s", "items": "/i", "manifest": "/m", "events": "/e"}
STARTED = {"batch_id": BATCH_ID, "name": "fox-abc123", "state": "SCHEDULED", "links": LINKS}

Handler = Callable[[httpx.Request], httpx.Response]


def _recording(handler: Handler) -> tuple[list[httpx.Request], httpx.MockTransport]:
    seen: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return handler(request)

    return seen, httpx.MockTransport(record)


def _status(state: str, **extra: Any) -> dict[str, Any]:
    return {**STARTED, "state": state, "state_name": state.title(), **extra}


async def test_submit_retries_503_with_one_idempotency_key() -> None:
    """A proxy's 503 twice, then 202: the batch is created once, every attempt carrying the same key."""
    answers = iter([httpx.Response(503), httpx.Response(503), httpx.Response(202, json=STARTED)])
    seen, transport = _recording(lambda _request: next(answers))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        batch = await client.submit_batch(["a fox"])

    assert batch.batch_id == BATCH_ID
    assert len(seen) == 3
    assert len({request.headers["Idempotency-Key"] for request in seen}) == 1


async def test_persistent_503_is_dashboard_unavailable_after_three_attempts() -> None:
    """Retries are bounded: the third 503 surfaces as a retryable `DashboardUnavailable`."""
    seen, transport = _recording(lambda _request: httpx.Response(503, json={"detail": "Prefect is restarting"}))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(DashboardUnavailable) as caught:
            await client.get_batch(BATCH_ID)

    assert len(seen) == 3
    assert caught.value.status_code == 503
    assert caught.value.detail == "Prefect is restarting"
    assert is_retryable(caught.value)


async def test_connection_refused_is_dashboard_unavailable_without_the_key() -> None:
    """A transport error becomes our error; neither its message nor the client's repr shows the key."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"refused, headers were {request.headers['Authorization']}", request=request)

    async with AsyncComfyBatchClient("http://dash", KEY, transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(DashboardUnavailable) as caught:
            await client.workflows()

    assert KEY not in str(caught.value)
    assert KEY not in repr(caught.value)
    assert KEY not in repr(client)


async def test_echoed_key_in_detail_is_masked() -> None:
    """A server that echoes the key in its error detail does not leak it through the SDK's error."""
    transport = httpx.MockTransport(lambda _r: httpx.Response(400, json={"detail": f"bad token {KEY}"}))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(BatchRejected) as caught:
            await client.validate(["a fox"])

    assert KEY not in str(caught.value)
    assert "***" in caught.value.detail


async def test_429_is_quota_exceeded_with_the_server_detail() -> None:
    """Over the key's quota: `QuotaExceeded` carrying the dashboard's explanation, retryable later."""
    detail = "key 'ci' has 90 image(s) queued and this batch adds 20: over its quota of 100"
    transport = httpx.MockTransport(lambda _r: httpx.Response(429, json={"detail": detail}))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(QuotaExceeded) as caught:
            await client.submit_batch(["a fox"])

    assert caught.value.detail == detail
    assert caught.value.retryable


async def test_500_page_is_unexpected_response_with_a_short_message() -> None:
    """A proxy's HTML error page is summarised in one short line, never dumped."""
    page = "<html><body><pre>Traceback (most recent call last):\n" + "  File x\n" * 500 + "</pre></body></html>"
    transport = httpx.MockTransport(lambda _r: httpx.Response(500, text=page))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(UnexpectedResponse) as caught:
            await client.items(BATCH_ID)

    assert caught.value.status_code == 500
    assert "Traceback" not in str(caught.value)
    assert len(str(caught.value)) < 200


async def test_unreadable_answer_is_unexpected_response() -> None:
    """A 200 whose body is not the documented shape is our error, not a pydantic traceback."""
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, json={"unexpected": True}))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(UnexpectedResponse):
            await client.get_batch(BATCH_ID)


async def test_400_problems_become_request_problems() -> None:
    """The dashboard's `problems` keep their row and column, and the error is a `BatchRequestError`."""
    body = {"detail": "the sheet has problems",
            "problems": [{"message": "the prompt is empty", "field": None, "row": 3, "column": "prompt"}]}  # fmt: skip
    transport = httpx.MockTransport(lambda _r: httpx.Response(400, json=body))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(BatchRejected) as caught:
            await client.submit_batch(["a fox"])

    assert isinstance(caught.value, BatchRequestError)
    assert [(p.row, p.column) for p in caught.value.problems] == [(3, "prompt")]
    assert "row 3, column 'prompt': the prompt is empty" in str(caught.value)


async def test_submit_body_is_a_valid_batch_spec() -> None:
    """Keyword arguments land in BatchSpec fields and `defaults`; the generated name fits the name pattern."""
    seen, transport = _recording(lambda _r: httpx.Response(202, json=STARTED))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport, workflow="picture-book-tiny") as client:
        await client.submit_batch("A Fox, Reading!", width=512, height=768, images_per_item=2, steps=20, cfg=6.5)

    body = json.loads(seen[0].content)
    spec = BatchSpec.model_validate(body)
    assert spec.workflow == "picture-book-tiny"
    assert spec.prompts == ["A Fox, Reading!"]
    assert spec.defaults == {"width": 512, "height": 768, "steps": 20, "cfg": 6.5}
    assert spec.images_per_item == 2
    assert spec.name.startswith("a-fox-reading-")
    assert re.match(BATCH_NAME_PATTERN, spec.name)


async def test_sheet_path_is_uploaded_then_named(tmp_path: Path) -> None:
    """A local sheet is PUT first (safe file name, CSV content type); the request names what the upload returned."""
    sheet = tmp_path / "my products (v2).csv"
    sheet.write_text("prompt\na mug\n", encoding="utf-8")
    uploaded = {"sheet": "/srv/out/.uploads/abc-my_products_v2.csv", "rows": 1, "columns": ["prompt"]}

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(201, json=uploaded) if request.method == "PUT" else httpx.Response(202, json=STARTED)

    seen, transport = _recording(answer)
    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        await client.submit_batch(sheet=sheet)

    put, post = seen
    assert put.url.path == "/api/uploads/my products _v2_.csv"
    assert put.headers["Content-Type"] == "text/csv"
    assert put.content == sheet.read_bytes()
    assert json.loads(post.content)["sheet"] == uploaded["sheet"]


async def test_wait_for_failed_batch_raises_batch_failed_naming_items() -> None:
    """A FAILED batch raises `BatchFailed` naming each failed item; `raise_on_failure=False` returns it."""
    failed = _status("FAILED", counts={"total": 2, "done": 1, "failed": 1, "pending": 0},
                     failures=[{"key": "abcd", "index": 1, "error": "JobFailed: boom"}])  # fmt: skip
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, json=failed))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(BatchFailed) as caught:
            await client.wait_for_batch(BATCH_ID)
        status = await client.wait_for_batch(BATCH_ID, raise_on_failure=False)

    assert "item 1 (abcd): JobFailed: boom" in str(caught.value)
    assert caught.value.statuses[0].state == "FAILED"
    assert status.state == "FAILED"


async def test_wait_for_batch_times_out_with_the_last_status() -> None:
    """A batch still running at the deadline raises `BatchWaitTimeout` (a `TimeoutError`) with its last status."""
    transport = httpx.MockTransport(lambda _r: httpx.Response(200, json=_status("RUNNING")))

    async with AsyncComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(TimeoutError) as caught:
            await client.wait_for_batch([BATCH_ID, BATCH_ID], timeout=0.05, poll_interval_s=0.01)

    assert isinstance(caught.value, BatchWaitTimeout)
    assert caught.value.status.state == "RUNNING"


async def test_events_give_up_after_max_reconnects_when_nothing_listens() -> None:
    """With no dashboard at all, `events` stops after `max_reconnects` attempts with `DashboardUnavailable`."""
    async with AsyncComfyBatchClient("http://127.0.0.1:9", KEY, timeout=2, max_reconnects=1) as client:
        with pytest.raises(DashboardUnavailable) as caught:
            [event async for event in client.events(BATCH_ID)]

    assert "resume with after=0" in str(caught.value)


def test_sync_client_runs_the_async_client() -> None:
    """The blocking client answers through its loop thread, maps errors alike, and stops its thread on close."""
    transport = httpx.MockTransport(lambda _r: httpx.Response(503))

    with ComfyBatchClient("http://dash", KEY, transport=transport) as client:
        with pytest.raises(DashboardUnavailable):
            client.workflows()
        thread = client._loop._thread

    assert not thread.is_alive()
    assert KEY not in repr(client)


def test_import_loads_neither_prefect_nor_fastapi() -> None:
    """The SDK is installable next to anything: importing it pulls in neither Prefect nor FastAPI."""
    check = "import comfybatch.client, sys; print(sorted({'prefect', 'fastapi'} & set(sys.modules)))"

    loaded = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout

    assert loaded.strip() == "[]"


def test_errors_belong_to_the_one_hierarchy() -> None:
    """Every SDK error is a `ComfyBatchError`, so one `except` covers the engine and the SDK."""
    from comfybatch.client import errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]

    assert all(issubclass(c, ComfyBatchError) for c in classes)
