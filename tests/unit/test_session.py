"""Sessions per ComfyUI server, without a server: lent once per server and loop, closed once idle."""

import asyncio
import time

import pytest

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.session import borrow_session, close_sessions, open_sessions
from comfybatch.local.fleet import free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
def dead_url() -> str:
    """A loopback port nothing listens on: every connection is refused at once."""
    return f"http://127.0.0.1:{free_port()}"


async def test_borrow_session_lends_one_client_per_server(dead_url: str) -> None:
    """Borrowers of one server get the same client; another server gets its own."""
    other_url = f"http://127.0.0.1:{free_port()}"
    try:
        async with (
            borrow_session(dead_url, name="a") as first,
            borrow_session(dead_url + "/", name="a") as second,
            borrow_session(other_url, name="b") as third,
        ):
            lent = len(open_sessions())
    finally:
        await close_sessions()

    assert first is second
    assert third is not first
    assert lent == 2
    assert open_sessions() == []


async def test_session_closes_itself_once_idle_and_is_not_lent_again(dead_url: str) -> None:
    """Once nobody has borrowed it for `linger_s`, a session closes and the next borrower gets a new one."""
    async with borrow_session(dead_url, name="a", linger_s=0.05) as first:
        pass
    async with asyncio.timeout(10):
        while open_sessions():  # noqa: ASYNC110 - the session's keeper ends by itself
            await asyncio.sleep(0.02)
    try:
        async with borrow_session(dead_url, name="a") as second:
            pass
    finally:
        await close_sessions()

    assert second is not first
    assert first.events.stopping


async def test_sessions_are_per_event_loop(dead_url: str) -> None:
    """A flow on another thread's event loop gets its own session: clients never cross loops."""

    async def borrow() -> ComfyClient:
        try:
            async with borrow_session(dead_url, name="a") as comfy:
                return comfy
        finally:
            await close_sessions()

    try:
        async with borrow_session(dead_url, name="a") as here:
            there = await asyncio.to_thread(asyncio.run, borrow())
    finally:
        await close_sessions()

    assert there is not here


async def test_follow_with_the_socket_down_gives_no_client_id_without_waiting(dead_url: str) -> None:
    """A refused socket does not hold a prompt up: its follower gets no client id and polls instead."""
    started = time.monotonic()
    async with ComfyClient(dead_url) as comfy, comfy.events.follow("prompt-1") as events:
        state = comfy.events.state

    assert events.client_id is None
    assert state == "down"
    assert time.monotonic() - started < 2.0
