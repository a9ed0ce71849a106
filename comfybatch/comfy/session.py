"""A session per ComfyUI server: one shared `ComfyClient` per server and event loop, borrowed by every job.

A flow's jobs run on one event loop, so they share one pooled HTTP client and one event socket per server.
Nothing per job opens a connection; a session closes itself once no job has borrowed it for `linger_s`.
"""

import asyncio
import contextlib
import threading
import weakref
from collections.abc import AsyncIterator

from comfybatch.comfy.client import ComfyClient

_SessionKey = tuple[str, str, str | None]  # base URL, server name, API key
_LINGER_S = 30.0  # keeps the socket across back-to-back jobs and batches, not across idle hours
_lock = threading.Lock()  # flows may run on several threads' loops at once
_sessions: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[_SessionKey, ComfyClient]]" = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def borrow_session(
    base_url: str, *, name: str, api_key: str | None = None, linger_s: float = _LINGER_S
) -> AsyncIterator[ComfyClient]:
    """Lend this loop's session for the server; the borrower never closes it.

    Example:
        async with borrow_session("http://gpu-a:8188", name="gpu-a") as comfy:
            result = await comfy.run(workflow)
    """
    loop = asyncio.get_running_loop()
    key = (base_url.rstrip("/"), name, api_key)
    with _lock:
        per_loop = _sessions.setdefault(loop, {})
        session = per_loop.get(key)
        if session is None or session.events.stopping:  # a stopping session is closing: never lend it
            session = ComfyClient(base_url, name=name, api_key=api_key, linger_s=linger_s, close_when_idle=True)
            per_loop[key] = session
    # Held from here without an await in between: the session cannot decide it is idle meanwhile.
    async with session.events.hold():
        yield session


async def close_sessions() -> None:
    """Close every session of the running loop now (end of a process's work, tests)."""
    with _lock:
        sessions = list(_sessions.pop(asyncio.get_running_loop(), {}).values())
    for session in sessions:
        await session.aclose()


def open_sessions() -> list[ComfyClient]:
    """The running loop's sessions that are still open (for tests and diagnostics)."""
    with _lock:
        per_loop = _sessions.get(asyncio.get_running_loop(), {})
        return [session for session in per_loop.values() if not session.events.stopping]
