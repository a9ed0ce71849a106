"""The API key's one home: bearer parsing, the guard's single check, and the size-limited body read."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI

from comfybatch.dashboard.auth import bearer_key_name
from comfybatch.dashboard.body import read_limited
from comfybatch.dashboard.deps import KeyName
from comfybatch.dashboard.guard import ApiGuard
from comfybatch.errors import RequestTooLarge
from comfybatch.settings import Settings

KEY = "unit-key-0123456789abcdef"


def _app(route_settings: Settings, guard_settings: Settings | None) -> FastAPI:
    """An app whose one route answers the key name `KeyName` gives it, behind the guard when `guard_settings`."""
    app = FastAPI()
    app.state.settings = route_settings
    if guard_settings is not None:
        app.add_middleware(ApiGuard, settings=guard_settings)

    @app.get("/api/whoami")
    async def whoami(key_name: KeyName) -> str:
        return key_name

    return app


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://dashboard")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_key_name_accepts_the_scheme_in_any_case(scheme: str) -> None:
    """`Authorization: <Bearer in any case> <key>` resolves to the key's configured name."""
    settings = Settings(api_keys={"alice": KEY})

    assert bearer_key_name({"authorization": f"{scheme} {KEY}"}, settings) == "alice"


@pytest.mark.parametrize("header", ["", KEY, f"Basic {KEY}", "Bearer wrong-key", "Bearer "])
def test_bearer_key_name_refuses_anything_but_a_configured_bearer_key(header: str) -> None:
    """A missing header, another scheme, a bare or a wrong key resolves to no name."""
    settings = Settings(api_keys={"alice": KEY})

    assert bearer_key_name({"authorization": header} if header else {}, settings) is None


@pytest.mark.anyio
async def test_key_name_is_the_one_the_guard_resolved() -> None:
    """Behind the guard a route gets the name the guard resolved: the request is not authenticated a second time."""
    app = _app(Settings(api_keys={"route": KEY}), guard_settings=Settings(api_keys={"guard": KEY}))

    async with _client(app) as client:
        answer = await client.get("/api/whoami", headers={"Authorization": f"Bearer {KEY}"})

    assert answer.json() == "guard"


@pytest.mark.anyio
async def test_key_name_without_the_guard_is_checked_by_the_dependency() -> None:
    """A route the guard did not see still refuses a wrong key with the guard's 401, and names a right one."""
    app = _app(Settings(api_keys={"alice": KEY}), guard_settings=None)

    async with _client(app) as client:
        refused = await client.get("/api/whoami", headers={"Authorization": "Bearer wrong-key"})
        accepted = await client.get("/api/whoami", headers={"Authorization": f"Bearer {KEY}"})

    assert (refused.status_code, refused.json(), refused.headers["www-authenticate"]) == (
        401, {"detail": "a valid API key is required"}, "Bearer")  # fmt: skip
    assert accepted.json() == "alice"


async def _chunks(*parts: bytes, read: list[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        read.append(part)
        yield part


@pytest.mark.anyio
async def test_read_limited_refuses_a_declared_length_over_the_limit_before_reading() -> None:
    """A Content-Length over the limit is a 413 naming the limit, and no chunk is read."""
    read: list[bytes] = []

    with pytest.raises(RequestTooLarge) as caught:
        await read_limited(_chunks(b"x", read=read), {"content-length": "11"}, limit=10, what="an upload")

    assert (str(caught.value), caught.value.http_status, read) == ("an upload may have at most 10 bytes", 413, [])


@pytest.mark.anyio
async def test_read_limited_refuses_a_body_longer_than_it_claims() -> None:
    """A body passing the limit is refused at the chunk that passes it, whatever Content-Length claimed."""
    read: list[bytes] = []
    chunks = _chunks(b"12345", b"67890", b"!", b"never read", read=read)

    with pytest.raises(RequestTooLarge, match="a request may have at most 10 bytes"):
        await read_limited(chunks, {"content-length": "3"}, limit=10, what="a request")

    assert read == [b"12345", b"67890", b"!"]


@pytest.mark.anyio
async def test_read_limited_returns_a_body_at_the_limit() -> None:
    """A body of exactly `limit` bytes is returned whole."""
    body = await read_limited(_chunks(b"12345", b"67890", read=[]), {}, limit=10, what="a request")

    assert body == b"1234567890"
