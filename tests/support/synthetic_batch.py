"""A finished batch of any size, answered in front of the real dashboard app: the page at 100,000 items.

No platform can render 100,000 images in test time, so `SyntheticBatch` answers the four requests the batch view
makes for one batch id (status, item pages, thumbnails, event stream) with the dashboard's own response schemas,
and hands every other request (the page itself, other batches) to the real app it wraps.
"""

import io
import uuid
from dataclasses import dataclass, field

from PIL import Image
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from comfybatch.dashboard.schemas import BatchCounts, BatchLinks, BatchStatus, ItemList, ItemStatus, ServerProgress

MAX_PAGE = 1000  # the real route's `limit` bound
SERVERS = ("gpu-a", "gpu-b")
CANCELLED_REASON = "cancelled by ci: the rest was not needed"


def _thumbnail() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (70, 110, 180)).save(buffer, format="PNG")
    return buffer.getvalue()


@dataclass
class SyntheticBatch:
    """A batch of `size` items: done but every 997th failed, then the last `tail` not rendered.

    Ended (`running=False`): CANCELLED, the tail cancelled, and the event stream ends at once. Running: the tail
    queued, and the event stream stays open and silent (the test feeds events to the page itself).
    """

    app: ASGIApp
    api_key: str
    size: int = 100_000
    tail: int = 40
    running: bool = False
    batch_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    item_requests: list[tuple[int, int]] = field(default_factory=list)  # (offset, limit) of every page asked for

    def __post_init__(self) -> None:
        self._png = _thumbnail()
        self._prefix = f"/api/batches/{self.batch_id}"
        self._status = self._count()  # once, here: the page's timings are not the synthetic server's

    def key(self, index: int) -> str:
        return f"scale-test-{index:05d}"

    def state(self, index: int) -> str:
        if index >= self.size - self.tail:
            return "queued" if self.running else "cancelled"
        return "failed" if index % 997 == 996 else "done"

    def item(self, index: int) -> ItemStatus:
        state = self.state(index)
        error = {"failed": "ComfyUI execution_error in node 3 (KSampler)", "cancelled": CANCELLED_REASON}.get(state)
        return ItemStatus(
            key=self.key(index), index=index, prompt=f"item {index + 1}: a lighthouse at dusk, take {index}",
            seed=index, state=state, server=SERVERS[index % 2] if state in ("done", "failed") else None, error=error,
            files=int(state == "done"),
            image=f"{self._prefix}/items/{self.key(index)}/image" if state == "done" else None,
        )  # fmt: skip

    def status(self) -> BatchStatus:
        return self._status

    def _count(self) -> BatchStatus:
        states = [self.state(index) for index in range(self.size)]
        servers = {name: ServerProgress() for name in SERVERS}
        for index, state in enumerate(states):
            if state in ("done", "failed"):
                progress = servers[SERVERS[index % 2]]
                progress.done += state == "done"
                progress.failed += state == "failed"
        counts = BatchCounts(total=self.size, done=states.count("done"), failed=states.count("failed"),
                             cancelled=states.count("cancelled"), pending=states.count("queued"))  # fmt: skip
        links = BatchLinks(self=self._prefix, items=f"{self._prefix}/items", manifest=f"{self._prefix}/manifest",
                           events=f"{self._prefix}/events")  # fmt: skip
        if self.running:
            return BatchStatus(batch_id=self.batch_id, name="scale-test", state="RUNNING", state_name="Running",
                               links=links, counts=counts, submitted_by="ci", servers=servers, eta_s=60.0)  # fmt: skip
        return BatchStatus(batch_id=self.batch_id, name="scale-test", state="CANCELLED", state_name="Cancelled",
                           links=links, counts=counts, submitted_by="ci", cancelled_by="ci", reason=CANCELLED_REASON,
                           servers=servers, eta_s=0.0)  # fmt: skip

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer for this batch; hand everything else to the wrapped app."""
        path = str(scope.get("path", ""))
        if scope["type"] == "websocket" and path == f"{self._prefix}/events":
            socket = WebSocket(scope, receive, send)
            await socket.accept()
            await socket.receive_text()  # the page's auth message
            if self.running:
                await socket.receive()  # open until the page leaves
            else:
                await socket.close(1000)  # an ended batch has no events after its status
        elif scope["type"] == "http" and (path == self._prefix or path.startswith(f"{self._prefix}/")):
            await self._answer(Request(scope, receive))(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    def _answer(self, request: Request) -> Response:
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            return JSONResponse({"detail": "A valid API key is required"}, status_code=401)
        rest = request.url.path.removeprefix(self._prefix)
        if rest == "":
            return Response(self.status().model_dump_json(), media_type="application/json")
        if rest == "/items":
            limit = int(request.query_params.get("limit", "100"))
            offset = int(request.query_params.get("offset", "0"))
            self.item_requests.append((offset, limit))
            if not 1 <= limit <= MAX_PAGE or offset < 0:
                return JSONResponse({"detail": [{"loc": ["query", "limit"], "msg": "out of range"}]}, status_code=422)
            items = [self.item(index) for index in range(offset, min(offset + limit, self.size))]
            page = ItemList(items=items, total=self.size, limit=limit, offset=offset)
            return Response(page.model_dump_json(), media_type="application/json")
        if rest.startswith("/items/") and rest.endswith("/image"):
            return Response(self._png, media_type="image/png")
        return JSONResponse({"detail": "not part of the synthetic batch"}, status_code=404)
