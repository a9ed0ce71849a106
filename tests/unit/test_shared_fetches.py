"""The dashboard's shared answers (`SharedFetches`): one fetch per key and interval, however many ask at once."""

import asyncio

import pytest

from comfybatch.dashboard.cache import SharedFetches

pytestmark = pytest.mark.anyio


async def test_concurrent_misses_share_one_fetch() -> None:
    """Twenty requests arriving while the first read is still under way all get its answer: one read in all."""
    shared, calls, release = SharedFetches(ttl_s=60), [], asyncio.Event()

    async def fetch() -> str:
        calls.append(1)
        await release.wait()
        return "answer"

    waiting = [asyncio.ensure_future(shared.get("run", fetch)) for _ in range(20)]
    await asyncio.sleep(0)  # every request is waiting on the one fetch
    release.set()

    assert await asyncio.gather(*waiting) == ["answer"] * 20
    assert len(calls) == 1


async def test_a_failed_fetch_is_not_kept() -> None:
    """A read that failed is not the answer for the next request: that one reads again."""
    shared = SharedFetches(ttl_s=60)
    answers = iter([RuntimeError("Prefect went away"), "answer"])

    async def fetch() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    with pytest.raises(RuntimeError):
        await shared.get("run", fetch)
    assert await shared.get("run", fetch) == "answer"


async def test_an_answer_expires_after_its_ttl() -> None:
    """An answer older than `ttl_s` is read again, whatever it says (an ended run can run again in place)."""
    shared, calls = SharedFetches(ttl_s=0.05), []

    async def fetch() -> int:
        calls.append(1)
        return len(calls)

    first = await shared.get("run", fetch)
    shared_meanwhile = await shared.get("run", fetch)
    await asyncio.sleep(0.2)

    assert (first, shared_meanwhile) == (1, 1)
    assert await shared.get("run", fetch) == 2


async def test_the_least_recently_used_answer_goes_first() -> None:
    """Beyond `maxsize` keys, the one asked for least recently is dropped; the others stay."""
    shared = SharedFetches(ttl_s=60, maxsize=2)

    async def fetch() -> str:
        return "answer"

    await shared.get("a", fetch)
    await shared.get("b", fetch)
    await shared.get("a", fetch)  # "b" is now the least recently used
    await shared.get("c", fetch)

    async def again() -> str:
        return "again"

    assert len(shared) == 2
    assert await shared.get("a", again) == "answer"
    assert await shared.get("b", again) == "again"
