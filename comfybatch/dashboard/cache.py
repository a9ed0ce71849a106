"""Answers shared between concurrent requests: a cachetools TLRU cache of in-flight fetches.

Many clients polling one batch cost Prefect one read per `ttl_s`, and concurrent misses await the same task, so a
burst of polls is one request too. cachetools keeps the size (least recently used goes first) and each entry's
expiry; this module adds only the sharing of one fetch.
"""

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, NamedTuple, TypeVar

from cachetools import TLRUCache

T = TypeVar("T")


class _Entry(NamedTuple):
    fetch: "asyncio.Future[Any]"
    ttl_s: float  # read by cachetools when the entry is stored: it expires `ttl_s` from then


def _expires(_key: Hashable, entry: _Entry, now: float) -> float:
    return now + entry.ttl_s


class SharedFetches:
    """`get(key, fetch)` answers from a fetch started less than `ttl_s` ago (running or done), else starts one.

    A fetch that failed or was cancelled is not kept: the next `get` starts a new one. Tasks belong to the event loop
    that started them, so one instance serves one loop.
    """

    def __init__(self, ttl_s: float, maxsize: int = 512) -> None:
        self.ttl_s = ttl_s
        self._entries: TLRUCache[Hashable, _Entry] = TLRUCache(maxsize=maxsize, ttu=_expires)

    async def get(self, key: Hashable, fetch: Callable[[], Awaitable[T]]) -> T:
        entry = self._entries.get(key)
        if entry is None or _failed(entry.fetch):
            entry = self._entries[key] = _Entry(asyncio.ensure_future(fetch()), self.ttl_s)
        # Shielded: one caller cancelled (a client went away) does not cancel the fetch the others await.
        result: T = await asyncio.shield(entry.fetch)
        return result

    def keep(self, key: Hashable, ttl_s: float) -> None:
        """Keep a fetched answer for `ttl_s` from now (an answer that no longer changes)."""
        if (entry := self._entries.get(key)) is not None:
            self._entries[key] = entry._replace(ttl_s=ttl_s)

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


def _failed(fetch: "asyncio.Future[Any]") -> bool:
    return fetch.done() and (fetch.cancelled() or fetch.exception() is not None)
