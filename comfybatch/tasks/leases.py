"""Prefect's concurrency-lease endpoints (and comfybatch's other small writes), with fast retries.

On SQLite a write often collides with other writes and answers 503 "database is locked" without a
Retry-After; Prefect's own client then sleeps 2 s, 4 s, … per attempt, which leaves GPUs idle (or,
at a batch's end, holds up its return). A collision clears in milliseconds, so this client retries
after 30-150 ms.
"""

import asyncio
import base64
import functools
import random
import ssl
import time
from types import TracebackType
from typing import Self
from uuid import UUID

import certifi
import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.responses import ConcurrencyLimitWithLeaseResponse
from prefect.context import AsyncClientContext
from prefect.settings import (
    PREFECT_API_AUTH_STRING,
    PREFECT_API_KEY,
    PREFECT_API_SSL_CERT_FILE,
    PREFECT_API_TLS_INSECURE_SKIP_VERIFY,
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_ENABLED,
)

LEASE_S = 60.0  # Prefect's minimum: a dead holder's unjournaled slot returns after ~75 s
_LOCKED, _UNAVAILABLE = 423, 503
_ATTEMPTS = 40
# A restarting Prefect server refuses connections for seconds (up to ~20 s when it waits for open
# sockets on shutdown). Wait for it rather than give up: a release given up on leaves the slot taken
# until the lease expires, and a failed progress write would fail the batch. Prefect's own client
# gives up after ~60 s.
_AWAY_S = 90.0
_AWAY_PAUSE_S = (0.1, 1.0)


def api_url() -> str:
    """Where the Prefect API is, in every mode: `PREFECT_API_URL`, or the temporary server Prefect starts (once per
    process) when none is configured. Cheap: no client is built."""
    if configured := PREFECT_API_URL.value():
        return str(configured).rstrip("/")
    if PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        from prefect.server.api.server import SubprocessASGIServer  # a server module: imported only here

        server = SubprocessASGIServer()  # Prefect's own per-process instance, the one `get_client()` starts
        server.start()  # returns at once when it already runs
        return server.api_url.rstrip("/")
    return str(get_client().api_url).rstrip("/")  # Prefect's own error for a missing URL


def tls_context() -> ssl.SSLContext:
    """One TLS context per process and settings, as Prefect's client builds it (building one costs ~18 ms)."""
    plain = str(PREFECT_API_URL.value() or "").startswith("http://")
    return _tls_context(bool(PREFECT_API_TLS_INSECURE_SKIP_VERIFY.value()), PREFECT_API_SSL_CERT_FILE.value() or None,
                        plain=plain)  # fmt: skip


@functools.cache
def _tls_context(insecure: bool, cert_file: str | None, *, plain: bool = False) -> ssl.SSLContext:
    if plain and not insecure:
        # An http:// API never uses it, so no CA bundle is loaded (a flow-run process pays that at its start);
        # trusting nothing, a redirect to https would fail rather than go unverified.
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context = ssl.create_default_context(cafile=cert_file or certifi.where())
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def prefect_client() -> PrefectClient:
    """Prefect's client for this loop: the run's own where there is one, else a new one on the shared TLS context.
    Use `async with`."""
    context = AsyncClientContext.get()
    if context is not None and getattr(context.client, "_loop", None) in (asyncio.get_running_loop(), None):
        return get_client()  # the run's own client
    return get_client(httpx_settings={"verify": tls_context()})


class LeaseApi:
    """increment / renew / release of `comfy:<server>` leases, and `send` for other small writes.

    Use `async with`.
    """

    def __init__(self) -> None:
        headers = {}
        if auth := PREFECT_API_AUTH_STRING.value():  # the same precedence as Prefect's own client
            headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
        elif key := PREFECT_API_KEY.value():
            headers["Authorization"] = f"Bearer {key}"
        self._http = httpx.AsyncClient(base_url=api_url(), headers=headers, verify=tls_context(),
                                       timeout=httpx.Timeout(30.0, connect=5.0))  # fmt: skip

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._http.aclose()

    async def increment(self, limit_name: str) -> ConcurrencyLimitWithLeaseResponse | None:
        """One slot of `limit_name` as a lease, or None when the limit is full (423)."""
        body = {"names": [limit_name], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_S}
        response = await self._post("/v2/concurrency_limits/increment-with-lease", body, accept=(200, _LOCKED))
        if response.status_code == _LOCKED:
            return None
        return ConcurrencyLimitWithLeaseResponse.model_validate(response.json())

    async def renew(self, lease_id: UUID) -> bool:
        """False when the lease is gone (expired, or never existed)."""
        response = await self._post(f"/v2/concurrency_limits/leases/{lease_id}/renew", {"lease_duration": LEASE_S},
                                    accept=(204, 404, 410))  # fmt: skip
        return response.status_code == 204

    async def release(self, lease_id: UUID) -> None:
        await self._post("/v2/concurrency_limits/decrement-with-lease", {"lease_id": str(lease_id)}, accept=(204, 404))

    async def _post(self, path: str, body: dict[str, object], *, accept: tuple[int, ...]) -> httpx.Response:
        return await self.send("POST", path, body, accept=accept)

    async def send(self, method: str, path: str, body: object = None, *, accept: tuple[int, ...]) -> httpx.Response:
        """One request to the Prefect API (`path` below `/api`), retried quickly while SQLite is locked
        and patiently while the server is away (restarting).

        Raises:
            httpx.HTTPStatusError for an answer outside `accept`, httpx.TransportError when the server stays
            away for `_AWAY_S`.
        """
        answers, away_since, pause_s = 0, None, _AWAY_PAUSE_S[0]
        while True:
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TransportError:
                # Under a burst the server drops some connections (ReadError); Prefect's own client retries
                # these too, increments included (a lost answer's lease then expires by itself).
                away_since = away_since or time.monotonic()
                if time.monotonic() - away_since >= _AWAY_S:
                    raise
                await asyncio.sleep(pause_s)
                pause_s = min(pause_s * 2, _AWAY_PAUSE_S[1])
                continue
            answers, away_since, pause_s = answers + 1, None, _AWAY_PAUSE_S[0]
            if response.status_code != _UNAVAILABLE or answers == _ATTEMPTS:
                break
            await asyncio.sleep(random.uniform(0.03, 0.15))  # a locked SQLite database frees up quickly
        if response.status_code not in accept:
            response.raise_for_status()
        return response
