"""Async client for one ComfyUI server: HTTP via httpx, events via websockets.

Every foreign exception becomes a `comfybatch.errors` error here; nothing above `comfy/`
catches httpx or websockets errors.
"""

import asyncio
import functools
import hashlib
import os
import ssl
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import quote

import httpx
import stamina
from pydantic import BaseModel, ValidationError

from comfybatch.comfy.follow import EventHandler, PromptResult, Timeouts, resume_prompt, run_prompt
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.protocol import (
    HistoryEntry,
    OutputFile,
    QueuedPrompt,
    QueueState,
    SystemStats,
    UploadedFile,
)
from comfybatch.comfy.rejection import classify_rejection
from comfybatch.comfy.socket import EventHub
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import ConfigError, DownloadError, ServerProtocolError, ServerUnavailable

_Model = TypeVar("_Model", bound=BaseModel)
_OBJECT_INFO_TTL_S = 300.0
# object_info is large and the server scans model folders to build it: one fetch per server per TTL.
_object_info_cache: dict[str, tuple[float, ObjectInfo]] = {}


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Loading the CA bundle costs ~18 ms of CPU: one context for every client of the process.
    return ssl.create_default_context()


def new_prompt_id() -> str:
    """A prompt id every ComfyUI accepts (master rejects anything but a canonical uuid4)."""
    return str(uuid.uuid4())


class DownloadedFile:
    """A file fetched from `/view`, bytes exactly as the server stored them."""

    def __init__(self, output: OutputFile, path: Path, sha256: str, size_bytes: int) -> None:
        self.output = output
        self.path = path
        self.sha256 = sha256
        self.size_bytes = size_bytes


class ComfyClient:
    """One ComfyUI server: a pooled HTTP client and one event socket shared by every prompt it follows.

    The creator closes it (`async with`); jobs borrow the process's shared one (`comfy.session.borrow_session`).

    Example:
        async with ComfyClient("http://127.0.0.1:8188", name="gpu-a") as comfy:
            result = await comfy.run(workflow)
    """

    def __init__(
        self,
        base_url: str,
        *,
        name: str | None = None,
        api_key: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_s: float = 30.0,
        linger_s: float = 30.0,
        close_when_idle: bool = False,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = name or httpx.URL(self.base_url).netloc.decode()
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            transport=transport,
            verify=_tls_context(),
            headers=self._headers,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 5.0)),
        )
        # One event socket for every prompt this client follows; a shared session closes itself once idle.
        self.events = EventHub(self.ws_url, self.name, headers=self._headers, linger_s=linger_s,
                               on_idle=self._http.aclose if close_when_idle else None)  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.events.close()
        await self._http.aclose()

    @property
    def ws_url(self) -> str:
        url = httpx.URL(self.base_url)
        return str(url.copy_with(scheme="wss" if url.scheme == "https" else "ws", path=url.path.rstrip("/") + "/ws"))

    # -- introspection -------------------------------------------------------------------------

    async def get_system_stats(self) -> SystemStats:
        """`GET /system_stats`, the readiness probe. Raises: ServerUnavailable."""
        return self._parse(SystemStats, await self._get("/system_stats"))

    async def get_object_info(self, *, refresh: bool = False) -> ObjectInfo:
        """Every node class the server offers, cached per server URL for a few minutes."""
        cached = _object_info_cache.get(self.base_url)
        if cached and not refresh and time.monotonic() - cached[0] < _OBJECT_INFO_TTL_S:
            return cached[1]
        response = await self._get("/object_info")
        try:
            info = ObjectInfo(self._json(response))
        except ValueError as exc:
            raise ServerProtocolError(f"unreadable /object_info: {exc}", server=self.name) from exc
        _object_info_cache[self.base_url] = (time.monotonic(), info)
        return info

    async def get_node_classes(self, class_types: Iterable[str]) -> ObjectInfo:
        """Just the named node classes (`GET /object_info/<class>` each, side by side); one the server lacks is
        absent. A fraction of `get_object_info`'s cost: ComfyUI builds the whole answer anew on every call."""
        names = sorted(set(class_types))
        answers = await asyncio.gather(*(self._get(f"/object_info/{quote(name, safe='')}") for name in names))
        raw: dict[str, Any] = {}
        for name, answer in zip(names, answers, strict=True):
            if not isinstance(data := self._json(answer), dict):
                raise ServerProtocolError(f"unreadable /object_info/{name}: not an object", server=self.name)
            raw.update(data)
        try:
            return ObjectInfo(raw)
        except ValueError as exc:
            raise ServerProtocolError(f"unreadable /object_info/<class>: {exc}", server=self.name) from exc

    # -- the queue -----------------------------------------------------------------------------

    async def queue_prompt(
        self, workflow: ApiWorkflow, *, prompt_id: str, client_id: str, front: bool = False,
        extra_data: dict[str, Any] | None = None,
    ) -> QueuedPrompt:  # fmt: skip
        """Queue `workflow` under a prompt_id we chose (`POST /prompt`).

        A 200 that still lists `node_errors` queued only part of the graph: the prompt is removed
        and the answer treated as a rejection.

        Raises:
            WorkflowRejected, ServerIncompatible, ServerUnavailable, ServerProtocolError.
        """
        payload: dict[str, Any] = {"prompt": workflow.nodes, "prompt_id": prompt_id, "client_id": client_id}
        if front:
            payload["front"] = True
        if extra_data:
            payload["extra_data"] = extra_data
        response = await self._send("POST", "/prompt", json=payload, accept=(200, 400))
        body = self._json(response)
        missing: dict[str, str] = {}
        if (
            response.status_code == 400
            and isinstance(body, dict)
            and (body.get("error") or {}).get("type") == "invalid_prompt"
        ):
            missing = await self._missing_nodes(workflow)
        if rejection := classify_rejection(body, server=self.name, missing_nodes=missing):
            if response.status_code == 200:
                await self.cancel(prompt_id)
            raise rejection
        return self._parse(QueuedPrompt, response)

    async def get_history(self, prompt_id: str) -> HistoryEntry | None:
        """The finished prompt, or None while it is unknown or unfinished."""
        body = self._json(await self._get(f"/history/{prompt_id}"))
        if not isinstance(body, dict) or prompt_id not in body:
            return None
        try:
            return HistoryEntry.model_validate(body[prompt_id])
        except ValidationError as exc:
            raise ServerProtocolError(f"unreadable /history entry: {exc}", server=self.name) from exc

    async def get_queue(self) -> QueueState:
        """Running and pending prompts (pending sorted by priority)."""
        body = self._json(await self._get("/queue"))
        if not isinstance(body, dict):
            raise ServerProtocolError("GET /queue did not answer an object", server=self.name)
        return QueueState.from_raw(body)

    async def interrupt(self, prompt_id: str) -> None:
        """Stop `prompt_id` if it is the one running; a no-op otherwise (ComfyUI >= 0.3.57)."""
        await self._send("POST", "/interrupt", json={"prompt_id": prompt_id})

    async def delete_queued(self, prompt_ids: Iterable[str]) -> None:
        """Remove pending prompts; unknown ids are ignored by the server."""
        await self._send("POST", "/queue", json={"delete": list(prompt_ids)})

    async def cancel(self, prompt_id: str) -> None:
        """Make sure `prompt_id` neither waits nor runs (delete if pending, interrupt if running)."""
        await self.delete_queued([prompt_id])
        await self.interrupt(prompt_id)

    async def delete_history(self, prompt_ids: Iterable[str]) -> None:
        """Forget collected prompts (history holds at most 10,000 entries, in RAM)."""
        await self._send("POST", "/history", json={"delete": list(prompt_ids)})

    async def free(self, *, unload_models: bool = True, free_memory: bool = True) -> None:
        """Ask the server to unload models and drop its node cache after the current prompt."""
        await self._send("POST", "/free", json={"unload_models": unload_models, "free_memory": free_memory})

    # -- files ---------------------------------------------------------------------------------

    async def upload_image(
        self, data: bytes | Path, *, filename: str | None = None, subfolder: str = "", overwrite: bool = False
    ) -> UploadedFile:
        """Upload an input image; use the returned `ref` in the graph (clashes get renamed)."""
        if isinstance(data, Path):
            filename = filename or data.name
            data = await asyncio.to_thread(data.read_bytes)
        if not filename:
            raise ConfigError("upload_image needs a filename for raw bytes")
        form = {"type": "input", "subfolder": subfolder, "overwrite": "true" if overwrite else "false"}
        files = {"image": (filename, data, "application/octet-stream")}
        response = await self._send("POST", "/upload/image", data=form, files=files)
        return self._parse(UploadedFile, response)

    async def has_input(self, filename: str, *, subfolder: str = "") -> bool:
        """Whether the server's input folder holds `subfolder/filename` (`HEAD /view?type=input`).

        Raises:
            ServerUnavailable, ServerProtocolError.
        """
        params = {"filename": filename, "subfolder": subfolder, "type": "input"}
        response = await self._head("/view", params=params, accept=(200, 404))
        return response.status_code == 200

    async def download(self, output: OutputFile, dest: Path) -> DownloadedFile:
        """Stream one output to `dest` (written atomically), bytes untouched.

        Raises:
            DownloadError.
        """
        try:
            return await self._download(output, dest)
        except ServerUnavailable as exc:
            raise DownloadError(f"GET /view {output.filename}: {exc}", server=self.name) from exc

    @stamina.retry(on=ServerUnavailable, attempts=3, timeout=30.0)
    async def _download(self, output: OutputFile, dest: Path) -> DownloadedFile:
        # A broken connection is retried like other reads: failing here would render the image again.
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        digest, size = hashlib.sha256(), 0
        try:
            async with self._http.stream("GET", "/view", params=output.view_params) as response:
                if response.status_code != 200:
                    raise DownloadError(f"GET /view {output.filename} -> {response.status_code}", server=self.name)
                with partial.open("wb") as sink:
                    async for chunk in response.aiter_bytes(1 << 16):
                        sink.write(chunk)
                        digest.update(chunk)
                        size += len(chunk)
            partial.replace(dest)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"GET /view {output.filename}: {exc!r}", server=self.name) from exc
        except httpx.HTTPError as exc:
            raise DownloadError(f"GET /view {output.filename}: {exc!r}", server=self.name) from exc
        finally:
            partial.unlink(missing_ok=True)
        return DownloadedFile(output, dest, digest.hexdigest(), size)

    # -- events --------------------------------------------------------------------------------

    async def run(
        self, workflow: ApiWorkflow, *, prompt_id: str | None = None, timeouts: Timeouts | None = None,
        on_event: EventHandler | None = None,
    ) -> PromptResult:  # fmt: skip
        """Queue `workflow` and follow it to its end over the shared event socket.

        Raises:
            WorkflowRejected, ServerIncompatible, ServerUnavailable, JobLost, JobTimeout,
            JobFailed, JobInterrupted.
        """
        return await run_prompt(self, workflow, prompt_id=prompt_id or new_prompt_id(),
                                timeouts=timeouts or Timeouts(), on_event=on_event)  # fmt: skip

    async def resume(self, prompt_id: str, *, timeouts: Timeouts | None = None) -> PromptResult:
        """Follow a prompt queued earlier (perhaps by another process) to its end, without resubmitting.

        Raises:
            JobLost when the server knows nothing of it, and the errors of `run`.
        """
        return await resume_prompt(self, prompt_id, timeouts=timeouts or Timeouts())

    # -- plumbing ------------------------------------------------------------------------------

    async def _missing_nodes(self, workflow: ApiWorkflow) -> dict[str, str]:
        info = await self.get_object_info(refresh=True)
        return {
            node_id: str(node.get("class_type"))
            for node_id, node in workflow.nodes.items()
            if not info.has_class(str(node.get("class_type")))
        }

    @stamina.retry(on=ServerUnavailable, attempts=3, timeout=30.0)
    async def _get(self, path: str, **kwargs: Any) -> httpx.Response:
        # Idempotent reads retry briefly: a blip should not fail over a whole job.
        return await self._send("GET", path, **kwargs)

    @stamina.retry(on=ServerUnavailable, attempts=3, timeout=30.0)
    async def _head(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self._send("HEAD", path, **kwargs)

    async def _send(self, method: str, path: str, *, accept: tuple[int, ...] = (200,), **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"{method} {path}: {exc!r}", server=self.name) from exc
        if response.status_code in accept:
            return response
        if response.status_code in (401, 403):
            raise ConfigError(f"[{self.name}] {method} {path} -> {response.status_code}: check the server's API key")
        error = ServerUnavailable if response.status_code >= 500 else ServerProtocolError
        raise error(f"{method} {path} -> {response.status_code}", server=self.name)

    def _json(self, response: httpx.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ServerProtocolError(
                f"{response.request.method} {response.request.url.path} answered non-JSON", server=self.name
            ) from exc

    def _parse(self, model: type[_Model], response: httpx.Response) -> _Model:
        try:
            return model.model_validate(self._json(response))
        except ValidationError as exc:
            raise ServerProtocolError(f"unexpected {model.__name__} payload: {exc}", server=self.name) from exc
