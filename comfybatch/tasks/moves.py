"""Prompts in flight per server, so that a server leaving the fleet hands back the ones it has not started.

A job registers its prompt while it follows it. When the fleet watch sees a server go (its block disabled or
deleted, its `comfybatch.toml` entry removed), the prompts there that have not started are deleted from that
server's queue; those the queue no longer holds are moved: their jobs stop following them and take a slot on
another server (`PromptMoved`). A prompt already running finishes where it is.
"""

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from comfybatch.blocks.connection import session_for
from comfybatch.blocks.server import ServerConfig
from comfybatch.errors import ComfyBatchError, PromptMoved

_T = TypeVar("_T")
logger = logging.getLogger(__name__)


@dataclass(eq=False)
class Tracked:
    """One prompt a job follows on a server."""

    prompt_id: str
    started: bool = False  # ComfyUI said execution_start: it finishes where it is
    moved: asyncio.Event = field(default_factory=asyncio.Event)


class InFlight:
    """The prompts this batch's jobs follow, by server (one event loop)."""

    def __init__(self) -> None:
        self._by_server: dict[str, dict[str, Tracked]] = defaultdict(dict)

    @contextlib.contextmanager
    def track(self, server: str, prompt_id: str, *, started: bool = False) -> Iterator[Tracked]:
        tracked = Tracked(prompt_id, started=started)
        self._by_server[server][prompt_id] = tracked
        try:
            yield tracked
        finally:
            self._by_server[server].pop(prompt_id, None)

    async def move_queued(self, server: ServerConfig) -> int:
        """Take the prompts not started on `server` off its queue and move their jobs; how many moved. A server
        that does not answer moves nothing: its jobs see it fail by themselves and fail over."""
        waiting = [tracked for tracked in self._by_server[server.name].values() if not tracked.started]
        if not waiting:
            return 0
        try:
            async with session_for(server) as comfy:
                await comfy.delete_queued([tracked.prompt_id for tracked in waiting])
                queue = await comfy.get_queue()
        except ComfyBatchError as exc:
            logger.warning("%s left the fleet; its queued prompts were not moved: %s", server.name, exc)
            return 0
        kept = {item.prompt_id for item in (*queue.running, *queue.pending)}
        moved = [tracked for tracked in waiting if tracked.prompt_id not in kept and not tracked.started]
        for tracked in moved:
            tracked.moved.set()
        return len(moved)


async def unless_moved(work: Awaitable[_T], tracked: Tracked, *, server: str) -> _T:
    """`work` (following `tracked` on `server`), stopped with PromptMoved if the prompt is moved first."""
    following = asyncio.ensure_future(work)
    moving = asyncio.ensure_future(tracked.moved.wait())
    try:
        await asyncio.wait({following, moving}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        moving.cancel()
        if not following.done():
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
    if following.cancelled() and tracked.moved.is_set():
        raise PromptMoved(f"left the fleet before prompt {tracked.prompt_id} started; it runs on another server",
                          server=server, prompt_id=tracked.prompt_id)  # fmt: skip
    return following.result()
