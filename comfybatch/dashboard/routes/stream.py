"""`WS /api/batches/{id}/events`: the batch's numbered events; `?after=N` resumes after event N.

Browsers cannot set headers on a WebSocket, so besides `Authorization: Bearer <key>` the first
message may be `{"type": "auth", "token": "<key>"}` (a key in the URL would land in access logs).
"""

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from starlette.websockets import WebSocketState

from comfybatch.dashboard.auth import KEY_REQUIRED, bearer_key_name, key_name_of
from comfybatch.dashboard.deps import HubDep, LauncherDep, SettingsDep
from comfybatch.errors import BatchNotFound

router = APIRouter(prefix="/api/batches", tags=["events"])
AUTH_TIMEOUT_S = 10.0
CLOSE_UNAUTHORIZED, CLOSE_NOT_FOUND = 4401, 4404  # 4000-4999: application codes, as HTTP status + 4000


async def _authenticate(websocket: WebSocket, settings: SettingsDep) -> str | None:
    if (name := bearer_key_name(websocket.headers, settings)) is not None:
        return name
    try:
        async with asyncio.timeout(AUTH_TIMEOUT_S):
            message = json.loads(await websocket.receive_text())
    except (TimeoutError, ValueError, WebSocketDisconnect):
        return None
    given = message.get("token") if isinstance(message, dict) and message.get("type") == "auth" else None
    return key_name_of(given, settings) if isinstance(given, str) else None


@router.websocket("/{batch_id}/events")
async def stream_events(
    websocket: WebSocket, batch_id: UUID, launcher: LauncherDep, hub: HubDep, settings: SettingsDep,
    after: Annotated[int, Query(ge=0)] = 0,
) -> None:  # fmt: skip
    """Send `{seq, type, occurred, ...}` messages after `after`, live until the batch's run ends, then close."""
    await websocket.accept()
    if await _authenticate(websocket, settings) is None:
        await websocket.close(CLOSE_UNAUTHORIZED, KEY_REQUIRED)
        return
    try:
        run = await launcher.get(batch_id)
    except BatchNotFound:
        await websocket.close(CLOSE_NOT_FOUND, f"no batch {batch_id}")
        return
    created = run.created or datetime.now(UTC)

    async def send_all() -> None:
        async for message in hub.stream(run.id, created, after=after):
            await websocket.send_json(message)

    async def until_gone() -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:  # clients say nothing more; reading notices when they leave
                await websocket.receive_text()

    sender, watcher = asyncio.create_task(send_all()), asyncio.create_task(until_gone())
    done, pending = await asyncio.wait({sender, watcher}, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    if sender in done and websocket.client_state == WebSocketState.CONNECTED:
        failed = sender.exception() is not None  # e.g. Prefect unreachable while reading the history
        await websocket.close(1011 if failed else 1000, "events unavailable, reconnect" if failed else "batch ended")
