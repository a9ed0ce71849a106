"""Slot leases alone against a local Prefect server (SQLite): how often does acquiring one answer 503?

    .venv/bin/python bench/lease_contention.py [--workers 8] [--hold 0.1] [--rounds 10]

Each worker takes a lease on its own `comfy:*` limit (increment-with-lease), holds it, releases it
(decrement-with-lease), as the slot broker does per job. No ComfyUI, no flow: only the two endpoints.
"""

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient, get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.local.prefect_server import LocalPrefectServer


class _CountingTransport(httpx.AsyncHTTPTransport):
    """Counts every HTTP attempt by (endpoint, status): the Prefect client's own retries included."""

    def __init__(self, counts: Counter[tuple[str, int]]) -> None:
        super().__init__()
        self.counts = counts

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.counts[(request.url.path.rsplit("/", 1)[-1], response.status_code)] += 1
        return response


async def _worker(client: PrefectClient, limit: str, *, rounds: int, hold_s: float, waits: list[float]) -> None:
    for _ in range(rounds):
        started = time.perf_counter()
        response = await client.increment_concurrency_slots_with_lease(
            names=[limit], slots=1, mode="concurrency", lease_duration=60
        )
        waits.append(time.perf_counter() - started)
        await asyncio.sleep(hold_s)
        await client.release_concurrency_slots_with_lease(response.json()["lease_id"])


async def measure(workers: int, *, rounds: int, hold_s: float) -> None:
    counts: Counter[tuple[str, int]] = Counter()
    httpx_settings: dict[str, Any] = {"transport": _CountingTransport(counts)}
    async with get_client(httpx_settings=httpx_settings) as client:
        limits = [f"comfy:contention-{index}" for index in range(workers)]
        for limit in limits:
            await client.upsert_global_concurrency_limit_by_name(limit, 2)
        waits: list[float] = []
        started = time.perf_counter()
        await asyncio.gather(*(_worker(client, lim, rounds=rounds, hold_s=hold_s, waits=waits) for lim in limits))
        elapsed = time.perf_counter() - started
    ideal = rounds * hold_s
    print(f"{workers} workers x {rounds} rounds, hold {hold_s:g} s: {elapsed:.1f} s (ideal {ideal:.1f} s)")
    print(f"  acquire latency: median {1000 * statistics.median(waits):.0f} ms, "
          f"mean {1000 * statistics.fmean(waits):.0f} ms, max {1000 * max(waits):.0f} ms")  # fmt: skip
    for (endpoint, status), count in sorted(counts.items()):
        if "lease" in endpoint:
            print(f"  {endpoint} -> {status}: {count}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=8, help="concurrent lease holders (default 8)")
    parser.add_argument("--hold", type=float, default=0.1, help="seconds each lease is held")
    parser.add_argument("--rounds", type=int, default=10, help="acquire/release rounds per worker")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="comfybatch-bench-") as tmp:
        server = LocalPrefectServer(Path(tmp))
        server.start()
        try:
            with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
                asyncio.run(measure(args.workers, rounds=args.rounds, hold_s=args.hold))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
