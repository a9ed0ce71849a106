"""`ComfyBatchClient`: the async client driven from blocking code through anyio's `BlockingPortal`."""

import functools
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar, overload

import anyio
import httpx
from anyio.from_thread import BlockingPortal

from comfybatch.client._request import DEFAULT_WORKFLOW, Workflow
from comfybatch.client.async_client import AsyncComfyBatchClient, BatchRef
from comfybatch.client.models import BatchEvent, BatchStatus

P = ParamSpec("P")
T = TypeVar("T")
_START_TIMEOUT_S = 30.0


class _LoopThread:
    """An event loop on a daemon thread behind a `BlockingPortal`.

    Not `anyio.from_thread.start_blocking_portal`: its worker thread is joined at interpreter exit, so a script
    that never closes its client would hang there; a daemon thread cannot.
    """

    def __init__(self) -> None:
        ready: Future[BlockingPortal] = Future()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="comfybatch-client", daemon=True)
        self._thread.start()
        self.portal = ready.result(timeout=_START_TIMEOUT_S)

    @staticmethod
    def _run(ready: "Future[BlockingPortal]") -> None:
        async def serve() -> None:
            async with BlockingPortal() as portal:
                ready.set_result(portal)
                await portal.sleep_until_stopped()

        try:
            anyio.run(serve)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            raise

    def stop(self) -> None:
        self.portal.call(self.portal.stop)
        self._thread.join(timeout=_START_TIMEOUT_S)


def _blocking(
    method: Callable[Concatenate[AsyncComfyBatchClient, P], Awaitable[T]],
) -> Callable[Concatenate["ComfyBatchClient", P], T]:
    """The async method as a blocking one with the same parameters and docstring."""

    def call(self: "ComfyBatchClient", /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self._loop.portal.call(functools.partial(method, self._client, *args, **kwargs))

    functools.update_wrapper(call, method)  # name, docstring and `inspect.signature` of the async method
    return call


class ComfyBatchClient:
    """The blocking client: the methods of `AsyncComfyBatchClient`, run on a private event loop thread.

    Example:
        with ComfyBatchClient("http://localhost:8000", api_key) as client:
            batch = client.submit_batch_tasks(["a fox", "an owl"], width=512, height=512, batch_name="animals")
            for event in client.events(batch):
                print(event.seq, event.type, event.key)
            client.wait_for_batch(batch)
            client.download(batch, "out/animals")
    """

    def __init__(
        self, url: str, api_key: str | None = None, *, timeout: float = 30.0, workflow: Workflow = DEFAULT_WORKFLOW,
        max_reconnects: int = 10, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        """Arguments as for `AsyncComfyBatchClient`."""
        self._client = AsyncComfyBatchClient(url, api_key, timeout=timeout, workflow=workflow,
                                             max_reconnects=max_reconnects, transport=transport)  # fmt: skip
        self._loop = _LoopThread()
        self._closed = False

    @property
    def url(self) -> str:
        return self._client.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}(url={self.url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections and stop the loop thread (idempotent)."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.portal.call(self._client.aclose)
            finally:
                self._loop.stop()

    submit_batch = _blocking(AsyncComfyBatchClient.submit_batch)
    submit_batch_tasks = submit_batch  # the name earlier ComfyUI batch clients used
    validate = _blocking(AsyncComfyBatchClient.validate)
    upload_sheet = _blocking(AsyncComfyBatchClient.upload_sheet)
    get_batch = _blocking(AsyncComfyBatchClient.get_batch)
    list_batches = _blocking(AsyncComfyBatchClient.list_batches)
    items = _blocking(AsyncComfyBatchClient.items)
    cancel = _blocking(AsyncComfyBatchClient.cancel)
    workflows = _blocking(AsyncComfyBatchClient.workflows)
    manifest = _blocking(AsyncComfyBatchClient.manifest)
    download = _blocking(AsyncComfyBatchClient.download)
    download_archive = _blocking(AsyncComfyBatchClient.download_archive)
    resume = _blocking(AsyncComfyBatchClient.resume)
    retry_failed = resume  # the page's "Retry failed" and "Render the rest" are this one call

    @overload
    def wait_for_batch(  # type: ignore[overload-overlap]  # a str is a Sequence: ids match this one first
        self, batch: BatchRef, timeout: float | None = None, *, raise_on_failure: bool = True,
        poll_interval_s: float = 1.0,
    ) -> BatchStatus: ...  # fmt: skip
    @overload
    def wait_for_batch(
        self, batch: Sequence[BatchRef], timeout: float | None = None, *, raise_on_failure: bool = True,
        poll_interval_s: float = 1.0,
    ) -> list[BatchStatus]: ...  # fmt: skip
    def wait_for_batch(
        self, batch: BatchRef | Sequence[BatchRef], timeout: float | None = None, *, raise_on_failure: bool = True,
        poll_interval_s: float = 1.0,
    ) -> BatchStatus | list[BatchStatus]:  # fmt: skip
        """Block until the batch (or every batch of a list) has ended; see `AsyncComfyBatchClient.wait_for_batch`.

        Raises:
            BatchFailed, BatchWaitTimeout.
        """
        wait: Callable[[], Awaitable[BatchStatus | list[BatchStatus]]] = functools.partial(
            self._client.wait_for_batch, batch, timeout,
            raise_on_failure=raise_on_failure, poll_interval_s=poll_interval_s,
        )  # fmt: skip
        return self._loop.portal.call(wait)

    def events(self, batch: BatchRef, after: int = 0) -> Iterator[BatchEvent]:
        """The batch's numbered events, resuming after disconnects; see `AsyncComfyBatchClient.events`.

        Raises:
            AuthenticationFailed, NotFound, DashboardUnavailable.
        """
        stream = self._client.events(batch, after=after)
        try:
            while True:
                try:
                    yield self._loop.portal.call(stream.__anext__)
                except StopAsyncIteration:
                    return
        finally:
            if not self._closed:  # closes the WebSocket when the caller stops early
                self._loop.portal.call(stream.aclose)
