"""Scale: one 10,000-image batch on short-Delay servers, checked from Prefect's side afterwards.

    .venv/bin/python bench/scale.py [--quick] [--servers 4] [--delay 0.05] [--images 10000]

Measures: completion, the orchestrator's peak RSS (this process runs the flow), the batch's task
runs as the Prefect server counts them, and `comfybatch.item.*` events emitted here vs stored
there. Prints a table and, as its last line, JSON. See `bench/README.md`.
"""

import argparse
import asyncio
import json
import resource
import sys
import threading
import time
import uuid
from collections import Counter
from typing import Any

from _common import Bench, bench_environment, flush_prefect, run_comfybatch, warm_up
from prefect.client.orchestration import get_client

from comfybatch.tasks.events import add_listener

RSS_TARGET_BYTES = 1 << 30
_DROPPED = "Subscription queue is full, dropping message"  # Prefect's in-memory broker, in its server log
_SETTLE_S = 60.0  # the server records task runs and events from a backlog: wait until the counts stop moving


class RssSampler:
    """This process's resident set every 0.2 s (VmRSS), for the peak during the batch alone."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, rss_bytes())
            self._stop.wait(0.2)


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def prefect_counts(batch: str, states: list[str]) -> tuple[int, dict[str, int]]:
    """(task runs of the batch's flow run, stored `comfybatch.item.<state>` events of the batch by state)."""
    async with get_client() as client:
        response = await client.request(  # the typed client has no count
            "POST", "/task_runs/count", json={"flow_runs": {"name": {"any_": [batch]}}}
        )
        task_runs = int(response.json())
        events: dict[str, int] = {}
        for state in states:
            body = {"filter": {"event": {"name": [f"comfybatch.item.{state}"]},
                               "resource": {"id": [f"comfybatch.batch.{batch}"]}}, "limit": 1}  # fmt: skip
            response = await client.request("POST", "/events/filter", json=body)
            events[state] = int(response.json()["total"])
    return task_runs, events


async def settle(batch: str, emitted: Counter[str], images: int) -> tuple[int, dict[str, int], float]:
    """Poll Prefect until task runs and events match what we sent, or stop moving for `_SETTLE_S`."""
    started = last_change = time.monotonic()
    previous: tuple[int, dict[str, int]] | None = None
    while True:
        counts = await prefect_counts(batch, sorted(emitted))
        if counts != previous:
            previous, last_change = counts, time.monotonic()
        task_runs, events = counts
        if (task_runs >= images and events == dict(emitted)) or time.monotonic() - last_change > _SETTLE_S:
            return task_runs, events, time.monotonic() - started
        await asyncio.sleep(2.0)


async def run(bench: Bench, args: argparse.Namespace, emitted: Counter[str]) -> tuple[Any, str, int]:
    await warm_up(bench)
    print(f"  comfybatch: {args.images} images ...", flush=True)
    with RssSampler() as sampler:
        phase, batch = await run_comfybatch(bench, delay_s=args.delay, images=args.images,
                                            run_id=uuid.uuid4().hex[:8])  # fmt: skip
    return phase, batch, sampler.peak_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="500 images (CI)")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--images", type=int)
    args = parser.parse_args(argv)
    args.images = args.images or (500 if args.quick else 10_000)
    emitted: Counter[str] = Counter()
    remove = add_listener(lambda name, _: emitted.update([name.removeprefix("comfybatch.item.")])
                          if name.startswith("comfybatch.item.") else None)  # fmt: skip
    print(f"starting {args.servers} ComfyUI servers and a Prefect server ...", flush=True)
    with bench_environment(args.servers) as bench:
        rss_before = rss_bytes()
        phase, batch, peak = asyncio.run(run(bench, args, emitted))
        remove()
        flush_prefect(timeout_s=120.0)  # hand every queued event to the server before counting
        print("  waiting for Prefect to record task runs and events ...", flush=True)
        task_runs, stored, settle_s = asyncio.run(settle(batch, emitted, args.images))
        log = bench.prefect.log_path.read_text(errors="replace") if bench.prefect.log_path.exists() else ""
        server_drops = log.count(_DROPPED)
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    done = len(phase.prompts)
    missing = {state: emitted[state] - stored.get(state, 0) for state in emitted if emitted[state] != stored.get(state)}
    print(f"\nscale: {args.servers} servers, Delay {args.delay:g} s, {args.images} images")
    rows = [
        ("images done", f"{done} / {args.images}"),
        ("makespan [s]", f"{phase.makespan_s:.1f}"),
        ("images/s", f"{done / phase.makespan_s:.1f}"),
        ("RSS before batch [MB]", f"{rss_before / 2**20:.0f}"),
        ("peak RSS during batch [MB]", f"{peak / 2**20:.0f}"),
        ("process max RSS (getrusage) [MB]", f"{max_rss / 2**20:.0f}"),
        ("task runs in Prefect", f"{task_runs}"),
        ("events emitted", ", ".join(f"{k} {v}" for k, v in sorted(emitted.items()))),
        ("events stored", ", ".join(f"{k} {v}" for k, v in sorted(stored.items()))),
        ("seconds until Prefect caught up", f"{settle_s:.0f}"),
        ("server log: messages dropped", f"{server_drops}"),
    ]
    for label, value in rows:
        print(f"{label:34}{value}")
    if phase.error:
        print(f"comfybatch: {phase.error}")
    met = {"completes": done == args.images, "rss": peak < RSS_TARGET_BYTES,
           "task_runs": task_runs == args.images, "no_dropped_events": not missing}  # fmt: skip
    result = {
        "bench": "scale", "quick": args.quick, "servers": args.servers, "delay_s": args.delay, "images": args.images,
        "done": done, "makespan_s": round(phase.makespan_s, 2), "images_per_s": round(done / phase.makespan_s, 2),
        "rss_before_mb": round(rss_before / 2**20), "peak_rss_mb": round(peak / 2**20),
        "max_rss_mb": round(max_rss / 2**20), "task_runs": task_runs, "events_emitted": dict(emitted),
        "events_stored": stored, "events_missing": missing, "settle_s": round(settle_s, 1),
        "server_dropped_messages": server_drops, "met": met,
    }  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
