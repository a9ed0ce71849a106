"""`AsyncComfyBatchClient`: the SDK itself; the sync client drives this one on a loop thread."""

import asyncio
import mimetypes
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, overload
from urllib.parse import quote
from uuid import uuid4

import httpx
import pydantic
import stamina

from comfybatch.client._events import follow_events
from comfybatch.client._http import error_for
from comfybatch.client._request import (
    DEFAULT_WORKFLOW,
    SheetSource,
    Workflow,
    batch_body,
    batch_name_for,
    local_sheet,
    upload_name,
)
from comfybatch.client.errors import BatchFailed, BatchWaitTimeout, DashboardUnavailable, UnexpectedResponse
from comfybatch.client.models import (
    BatchEvent,
    BatchStarted,
    BatchStatus,
    BatchSummary,
    ItemStatus,
    Uploaded,
    ValidationReport,
)

Answer = TypeVar("Answer", bound=pydantic.BaseModel)
BatchRef = str | BatchStarted
"""A batch id, or anything the client returned for a batch (`BatchStarted`, `BatchStatus`)."""
PAGE_SIZE = 1000  # the items route's largest page
DOWNLOADS_AT_ONCE = 4


class _ItemPage(pydantic.BaseModel):
    items: list[ItemStatus]
    total: int


class _BatchPage(pydantic.BaseModel):
    batches: list[BatchSummary]


class _WorkflowList(pydantic.BaseModel):
    workflows: list[str]


def batch_id_of(batch: BatchRef) -> str:
    return batch if isinstance(batch, str) else batch.batch_id


class AsyncComfyBatchClient:
    """A client of the comfybatch dashboard API (`comfybatch dashboard`): submit, follow and download batches.

    Every request is retried on connection errors and 502/503/504 (3 attempts, at most 30 s): batch creation is
    safe to retry because each call sends its own `Idempotency-Key`. The API key is never shown in a repr or error.

    Example:
        async with AsyncComfyBatchClient("http://localhost:8000", api_key) as client:
            batch = await client.submit_batch(["a fox reading", "an owl"], workflow="picture-book-tiny")
            async for event in client.events(batch):
                print(event.seq, event.type, event.key)
            await client.download(batch, "out/")
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = 30.0, workflow: Workflow = DEFAULT_WORKFLOW,
        max_reconnects: int = 10, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        """Args:
        url: The dashboard's base URL, e.g. `http://localhost:8000`.
        api_key: Sent as `Authorization: Bearer <key>`; None when the operator disabled authentication.
        timeout: Seconds for each HTTP request and WebSocket handshake.
        workflow: The template (or graph, or local workflow file) of batches that name none.
        max_reconnects: Event-stream drops in a row before `events` gives up.
        transport: An httpx transport (tests: `httpx.MockTransport`).
        """
        self.url = url.rstrip("/")
        self.workflow = workflow
        self.timeout = timeout
        self.max_reconnects = max_reconnects
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=timeout, transport=transport)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit_batch(
        self, /, prompts: Sequence[str] | str | None = None, *, sheet: SheetSource | None = None,
        workflow: Workflow | None = None, width: int | None = None, height: int | None = None,
        batch_name: str | None = None, idempotency_key: str | None = None, bindings: Mapping[str, str] | None = None,
        sweep: Mapping[str, Any] | None = None, images_per_item: int | None = None, seed_policy: str | None = None,
        base_seed: int | None = None, priority: int | None = None, servers: Sequence[str] | None = None,
        images: Sequence[str | os.PathLike[str]] | None = None, **params: Any,
    ) -> BatchStarted:  # fmt: skip
        """Start a batch: one item per prompt and per sheet row, times the sweep (`POST /api/batches`).

        Args:
            prompts: One item per prompt.
            sheet: A local .csv/.xlsx/.parquet file (uploaded first), or the `sheet` of an earlier `upload_sheet`.
            workflow: Template name, API/UI graph, or local workflow file; default: the client's `workflow`.
            width: Image width (`defaults.width`); height likewise.
            batch_name: The batch's name and output folder; a fresh slug of the first prompt when omitted.
            idempotency_key: Makes a repeated call return the same batch; one is generated for each call.
            images: Input images, one item each: local files (uploaded first), local .zip files of images (each image
                an item) or https URLs.
            bindings, sweep, images_per_item, seed_policy, base_seed, priority, servers: `BatchSpec` fields.
            **params: Values for parameters the items leave out (`BatchSpec.defaults`), e.g. `steps=20`.

        Raises:
            BatchRejected (names each field, row and column), AuthenticationFailed, QuotaExceeded,
            DashboardUnavailable.
        """
        body = await self._batch_body(prompts, sheet, workflow, width, height, batch_name, params, {
            "bindings": bindings, "sweep": sweep, "images_per_item": images_per_item, "seed_policy": seed_policy,
            "base_seed": base_seed, "priority": priority, "servers": servers,
            "images": await self._image_refs(images) if images is not None else None,
        })  # fmt: skip
        headers = {"Idempotency-Key": idempotency_key or f"sdk-{uuid4()}"}  # retries below reuse it: one batch
        return await self._call(BatchStarted, "POST", "/api/batches", json=body, headers=headers)

    submit_batch_tasks = submit_batch  # the name earlier ComfyUI batch clients used

    async def validate(
        self, /, prompts: Sequence[str] | str | None = None, *, sheet: SheetSource | None = None,
        workflow: Workflow | None = None, width: int | None = None, height: int | None = None,
        batch_name: str | None = None, bindings: Mapping[str, str] | None = None,
        sweep: Mapping[str, Any] | None = None, images_per_item: int | None = None, seed_policy: str | None = None,
        base_seed: int | None = None, priority: int | None = None, servers: Sequence[str] | None = None,
        **params: Any,
    ) -> ValidationReport:  # fmt: skip
        """The fleet's dry run of the same request as `submit_batch`: which jobs can run where; renders nothing.

        Raises:
            BatchRejected, AuthenticationFailed, DashboardUnavailable.
        """
        body = await self._batch_body(prompts, sheet, workflow, width, height, batch_name, params, {
            "bindings": bindings, "sweep": sweep, "images_per_item": images_per_item, "seed_policy": seed_policy,
            "base_seed": base_seed, "priority": priority, "servers": servers,
        })  # fmt: skip
        return await self._call(ValidationReport, "POST", "/api/validate", json=body)

    async def _image_refs(self, images: Sequence[str | os.PathLike[str]]) -> list[str]:
        """Each image as the API takes it: an https URL as it is, a local file uploaded first, a local .zip's images
        uploaded in one request (in name order)."""
        refs = []
        for image in images:
            text = os.fspath(image)
            if "://" in text:
                refs.append(text)
                continue
            uploaded = await self.upload_sheet(text)
            refs += uploaded.images if uploaded.images is not None else [str(uploaded.image)]
        return refs

    async def upload_sheet(self, path: str | os.PathLike[str]) -> Uploaded:
        """Store a local sheet or input image on the dashboard (`PUT /api/uploads/{name}`); its `sheet` goes into a
        request, or its `image` into `images`.

        Raises:
            BatchRejected (unreadable sheet, wrong type, too large), AuthenticationFailed, DashboardUnavailable.
        """
        name, media = upload_name(Path(path))
        data = await asyncio.to_thread(Path(path).read_bytes)
        return await self._call(Uploaded, "PUT", f"/api/uploads/{quote(name)}", content=data,
                                headers={"Content-Type": media})  # fmt: skip

    async def get_batch(self, batch: BatchRef) -> BatchStatus:
        """The batch's state, counts, per-server progress, ETA and first failures.

        Raises:
            NotFound, AuthenticationFailed, DashboardUnavailable.
        """
        return await self._call(BatchStatus, "GET", f"/api/batches/{batch_id_of(batch)}")

    async def list_batches(
        self, *, state: str | None = None, name: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[BatchSummary]:
        """Batches, newest first; `state` e.g. `running`, `completed`."""
        query = {k: v for k, v in (("state", state and state.lower()), ("name", name)) if v}
        page = await self._call(_BatchPage, "GET", "/api/batches", params={**query, "limit": limit, "offset": offset})
        return page.batches

    async def items(self, batch: BatchRef) -> list[ItemStatus]:
        """Every item of the batch in order, queued ones included (pages through `GET .../items`)."""
        path, items = f"/api/batches/{batch_id_of(batch)}/items", list[ItemStatus]()
        while True:
            page = await self._call(_ItemPage, "GET", path, params={"limit": PAGE_SIZE, "offset": len(items)})
            items.extend(page.items)
            if not page.items or len(items) >= page.total:
                return items

    async def cancel(self, batch: BatchRef) -> BatchStarted:
        """Ask for the batch to be cancelled; it ends CANCELLED once its running jobs stop."""
        return await self._call(BatchStarted, "POST", f"/api/batches/{batch_id_of(batch)}/cancel")

    async def resume(self, batch: BatchRef) -> BatchStarted:
        """Render what an ended batch left undone (failed, cancelled, never started) in a new run of the same batch;
        its stored images are kept. The new run's id is in the answer; asking again answers the same run.

        Raises:
            NotFound, BatchRejected: the batch is still under way or every item is done (409), QuotaExceeded.
        """
        return await self._call(BatchStarted, "POST", f"/api/batches/{batch_id_of(batch)}/resume")

    retry_failed = resume  # the page's "Retry failed" and "Render the rest" are this one call

    async def workflows(self) -> list[str]:
        """The template names the dashboard accepts as `workflow`."""
        return (await self._call(_WorkflowList, "GET", "/api/workflows")).workflows

    async def manifest(self, batch: BatchRef, *, format: Literal["csv", "parquet"] = "csv") -> bytes:
        """The batch's manifest (one row per image), once the batch has ended.

        Raises:
            NotFound: the batch has not written it yet.
        """
        response = await self._send("GET", f"/api/batches/{batch_id_of(batch)}/manifest", params={"format": format})
        return response.content

    @overload
    async def wait_for_batch(  # type: ignore[overload-overlap]  # a str is a Sequence: ids match this one first
        self, batch: BatchRef, timeout: float | None = None, *, raise_on_failure: bool = True,  # noqa: ASYNC109
        poll_interval_s: float = 1.0,
    ) -> BatchStatus: ...  # fmt: skip
    @overload
    async def wait_for_batch(
        self, batch: Sequence[BatchRef], timeout: float | None = None, *, raise_on_failure: bool = True,  # noqa: ASYNC109
        poll_interval_s: float = 1.0,
    ) -> list[BatchStatus]: ...  # fmt: skip
    async def wait_for_batch(
        self, batch: BatchRef | Sequence[BatchRef], timeout: float | None = None, *, raise_on_failure: bool = True,  # noqa: ASYNC109
        poll_interval_s: float = 1.0,
    ) -> BatchStatus | list[BatchStatus]:  # fmt: skip
        """Poll until the batch (or every batch of a list) has ended; its final status (or statuses, in order).

        Raises:
            BatchFailed: with `raise_on_failure`, a batch ended other than COMPLETED or has failed items.
            BatchWaitTimeout: still running after `timeout` seconds (None: no limit).
        """
        refs = [batch] if isinstance(batch, str | BatchStarted) else list(batch)
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        statuses: dict[int, BatchStatus] = {}
        while True:
            for number, ref in enumerate(refs):
                if number not in statuses or not statuses[number].finished:
                    statuses[number] = await self.get_batch(ref)
            waiting = [statuses[n] for n in range(len(refs)) if not statuses[n].finished]
            if not waiting:
                break
            left = None if deadline is None else deadline - asyncio.get_running_loop().time()
            if left is not None and left <= 0:
                first = waiting[0]
                message = f"batch {first.name} ({first.batch_id}) is still {first.state} after {timeout:g} s"
                pending = "items" if first.counts.pending is None else f"{first.counts.pending} item(s)"  # no plan yet
                raise BatchWaitTimeout(f"{message}: {pending} pending", status=first)
            await asyncio.sleep(poll_interval_s if left is None else min(poll_interval_s, left))
        final = [statuses[n] for n in range(len(refs))]
        if raise_on_failure and (failed := [status for status in final if not status.succeeded]):
            raise BatchFailed(failed)
        return final[0] if isinstance(batch, str | BatchStarted) else final

    async def events(self, batch: BatchRef, after: int = 0) -> AsyncGenerator[BatchEvent, None]:
        """The batch's numbered events after `after`, live until its run ends; resumes after disconnects.

        A dropped connection is reopened with `after=<last seq>` (backing off, `max_reconnects` in a row), so
        every event arrives once, in order. To resume later yourself, pass the last `seq` you saw as `after`.

        Raises:
            AuthenticationFailed, NotFound, DashboardUnavailable.
        """
        path = f"/api/batches/{batch_id_of(batch)}/events"
        ws_base = "ws" + self.url.removeprefix("http")  # http -> ws, https -> wss
        async for event in follow_events(
            f"{ws_base}{path}", request=f"WS {path}", api_key=self._api_key, after=after,
            open_timeout_s=self.timeout, max_reconnects=self.max_reconnects,
        ):  # fmt: skip
            yield event

    async def download(self, batch: BatchRef, dest: str | os.PathLike[str]) -> list[Path]:
        """Write every item's image (`<index>_<key>.png`) and `manifest.csv` into `dest`; their paths.

        Call it once the batch has ended (`wait_for_batch`): items without an image yet are skipped.

        Raises:
            NotFound: the batch has no manifest yet.
        """
        folder = Path(dest)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        with_image = [item for item in await self.items(batch) if item.image]
        limit = asyncio.Semaphore(DOWNLOADS_AT_ONCE)

        async def fetch(item: ItemStatus) -> Path:
            async with limit:
                response = await self._send("GET", item.image or "")
            media = response.headers.get("content-type", "").split(";")[0]
            suffix = ".png" if media == "image/png" else mimetypes.guess_extension(media) or ".bin"
            path = folder / f"{(item.index or 0) + 1:05d}_{item.key}{suffix}"  # numbered from 1, as the page
            await asyncio.to_thread(path.write_bytes, response.content)
            return path

        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(fetch(item)) for item in with_image]
        except ExceptionGroup as failed:  # our typed error, not a group of them
            raise failed.exceptions[0] from None
        manifest = folder / "manifest.csv"
        await asyncio.to_thread(manifest.write_bytes, await self.manifest(batch))
        return [*(task.result() for task in tasks), manifest]

    async def download_archive(self, batch: BatchRef, dest: str | os.PathLike[str]) -> Path:
        """Stream the batch's zip (its stored images and manifest, bytes as stored) to `dest`: a file, or an existing
        folder to hold `<batch name>.zip`; its path. Written to `<file>.part` first: a broken download leaves nothing.

        Raises:
            NotFound: the batch has stored nothing yet.
        """
        path = f"/api/batches/{batch_id_of(batch)}/archive.zip"
        async for attempt in stamina.retry_context(on=DashboardUnavailable, attempts=3, timeout=30.0):
            with attempt:
                return await self._stream_to(path, Path(dest))
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _stream_to(self, path: str, dest: Path) -> Path:
        where = f"GET {path}"
        try:
            async with self._http.stream("GET", path) as response:
                if not response.is_success:
                    await response.aread()
                    raise error_for(response, where, secret=self._api_key)
                disposition = response.headers.get("content-disposition", "")
                name = disposition.partition('filename="')[2].partition('"')[0] or Path(path).name
                target = dest / Path(name).name if await asyncio.to_thread(dest.is_dir) else dest
                partial = target.with_name(f"{target.name}.part")
                try:
                    with await asyncio.to_thread(partial.open, "wb") as out:
                        async for chunk in response.aiter_bytes():
                            await asyncio.to_thread(out.write, chunk)
                    await asyncio.to_thread(partial.replace, target)
                finally:
                    await asyncio.to_thread(partial.unlink, missing_ok=True)  # gone already when it became the zip
                return target
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}".replace(self._api_key or "\0", "***")
            raise DashboardUnavailable(reason, request=where) from exc

    async def _batch_body(
        self, prompts: Sequence[str] | str | None, sheet: SheetSource | None, workflow: Workflow | None,
        width: int | None, height: int | None, batch_name: str | None, params: Mapping[str, Any],
        fields: Mapping[str, Any],
    ) -> dict[str, Any]:  # fmt: skip
        texts = [prompts] if isinstance(prompts, str) else list(prompts or [])
        sheet_ref: str | None = None
        if sheet is not None:
            local = local_sheet(sheet)
            sheet_ref = (await self.upload_sheet(local)).sheet if local is not None else os.fspath(sheet)
        return batch_body(
            name=batch_name or batch_name_for(texts, sheet), workflow=self.workflow if workflow is None else workflow,
            prompts=texts, sheet=sheet_ref, width=width, height=height, fields=fields, params=params,
        )  # fmt: skip

    async def _call(self, answer: type[Answer], method: str, path: str, **request: Any) -> Answer:
        response = await self._send(method, path, **request)
        try:
            return answer.model_validate_json(response.content)
        except pydantic.ValidationError as exc:
            raise UnexpectedResponse(f"unreadable answer ({exc.error_count()} problem(s))", request=f"{method} {path}",
                                     status_code=response.status_code) from exc  # fmt: skip

    async def _send(self, method: str, path: str, **request: Any) -> httpx.Response:
        # Every call is safe to repeat: reads, uploads named by content hash, cancel, and creation with its key.
        async for attempt in stamina.retry_context(on=DashboardUnavailable, attempts=3, timeout=30.0):
            with attempt:
                return await self._send_once(method, path, **request)
        raise AssertionError("unreachable: stamina re-raises the last error")

    async def _send_once(self, method: str, path: str, **request: Any) -> httpx.Response:
        where = f"{method} {path}"
        try:
            response = await self._http.request(method, path, **request)
        except httpx.TransportError as exc:
            reason = f"{type(exc).__name__}: {exc}".replace(self._api_key or "\0", "***")
            raise DashboardUnavailable(reason, request=where) from exc
        if response.is_success:
            return response
        raise error_for(response, where, secret=self._api_key)
