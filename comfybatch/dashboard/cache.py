"""Answers shared between concurrent requests: a cachetools TTL cache of in-flight fetches.

Many clients polling one batch cost Prefect one read per `ttl_s`, and concurrent misses await the same task, so a
burst of polls is one request too. cachetools keeps the size (least recently used goes first) and the expiry; this
module adds only the sharing of one fetch.
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

from cachetools import TTLCache

T = TypeVar("T")


class SharedFetches:
    """`get(key, fetch)` answers from a fetch started less than `ttl_s` ago (running or done), else starts one.

    A fetch that failed or was cancelled is not kept: the next `get` starts a new one. Tasks belong to the event loop
    that started them, so one instance serves one loop.
    """

    def __init__(self, ttl_s: float, maxsize: int = 512) -> None:
        self.ttl_s = ttl_s
        self._entries: TTLCache[Hashable, asyncio.Future[Any]] = TTLCache(maxsize=maxsize, ttl=ttl_s)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.get(key)
        if entry is None or _failed(entry):
            entry = self._entries[key] = asyncio.ensure_future(fetch())
        # Shielded: one caller cancelled (a client went away) does not cancel the fetch the others await.
        result: T = await asyncio.shield(entry)
        return result

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _failed(fetch: "asyncio.Future[Any]") -> bool:
    return fetch.done() and (fetch.cancelled() or fetch.exception() is not None)
