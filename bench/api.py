"""API shim under load: latency of status/list/submit, WebSocket event latency, and the batch's slowdown.

One run, real processes: a ComfyUI fleet with the Delay node, `prefect server start`, `comfybatch serve`
and the dashboard (`python -m comfybatch.dashboard`). Then:

1. **alone**: one reference batch created over the API; its makespan is read from its own events
   (`batch.submitted` to `run.completed`).
2. **under load**: the same batch again while N clients hammer the shim for D seconds (70 % status,
   25 % list, 5 % submit of a dry run under one of a few idempotency keys, so the load creates a
   handful of runs, not hundreds of processes). The clients run in a process of their own; each process's
   CPU over the window is reported (`cpu_share`: cores used, 1.0 = one core busy throughout). A WebSocket
   subscriber follows the batch and times each item event from its `occurred` stamp (the engine's clock,
   when it heard from ComfyUI) to receipt.
3. **a finished 100,000-image batch** (`bench/_record.py`): its status read 200 times.

Targets (issue 12): status p99 < 50 ms, list p99 < 100 ms, events p99 < 100 ms, 0 errors, batch slowed by at
most 10 %; a finished 100,000-image batch's status < 50 ms.

    python bench/api.py            # 50 clients for 60 s, 2 servers, Delay 0.5 s x 100 images
    python bench/api.py --quick    # 10 clients for 10 s, Delay 0.2 s x 30 images
"""

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Bench, bench_environment, cpu_seconds, delay_graph, stop_process, warm_up
from _record import finished_status_reads

from comfybatch.local.fleet import free_port

KEY = os.environ.get("BENCH_API_KEY") or "bench-" + uuid.uuid4().hex
AUTH = {"Authorization": f"Bearer {KEY}"}
DEPLOYMENT = "generate-batch/generate-batch"


@dataclass
class Load:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))


def _ms(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def reference_spec(name: str, delay_s: float, images: int) -> dict[str, Any]:
    return {"name": name, "workflow": delay_graph(delay_s, prefix=f"bench/{name}"),
            "bindings": {"nonce": "2.inputs.nonce"},
            "sweep": {"axes": {"nonce": [f"{name}-{i}" for i in range(images)]}}}  # fmt: skip


def start_platform(bench: Bench) -> tuple[list[subprocess.Popen[bytes]], str]:
    """`comfybatch serve` and the dashboard as child processes; returns them and the dashboard URL."""
    port = free_port()
    env = {**os.environ, "PREFECT_API_URL": bench.prefect.api_url, "PREFECT_HOME": str(bench.root / "prefect-client"),
           "COMFYBATCH_API_KEYS": f"bench:{KEY}", "COMFYBATCH_DASHBOARD_PORT": str(port),
           "PREFECT_RUNNER_POLL_FREQUENCY": "1", "PREFECT_LOGGING_LEVEL": "WARNING"}  # fmt: skip
    logs = bench.root / "platform.log"
    with logs.open("ab") as sink:
        serve = subprocess.Popen([sys.executable, "-m", "comfybatch.cli", "serve"], env=env, cwd=bench.root,
                                 stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
        dashboard = subprocess.Popen([sys.executable, "-m", "comfybatch.dashboard"], env=env, cwd=bench.root,
                                     stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            ready = httpx.get(f"{bench.prefect.api_url}/deployments/name/{DEPLOYMENT}", timeout=5).status_code == 200
            ready = ready and httpx.get(f"{url}/api/workflows", headers=AUTH, timeout=5).status_code == 200
        except httpx.TransportError:
            ready = False
        if ready:
            return [serve, dashboard], url
        time.sleep(0.5)
    raise RuntimeError(f"platform did not start; see {logs}")


async def follow(url: str, batch_id: str, started: float) -> tuple[float, list[float]]:
    """(makespan from `started` to the run's end, per item-event latencies in seconds)."""
    latencies: list[float] = []
    ws_url = f"{url.replace('http://', 'ws://')}/api/batches/{batch_id}/events"
    end = time.time()
    async with websockets.connect(ws_url, additional_headers=AUTH, max_size=None) as socket:
        async for frame in socket:
            message = json.loads(frame)
            received = time.time()
            occurred = datetime.fromisoformat(message["occurred"]).timestamp()
            if message["type"].startswith("item.") and occurred >= started:  # live ones, not the replayed past
                latencies.append(received - occurred)
            if message["type"].startswith("run."):
                end = occurred
    return end - started, latencies


async def run_reference(url: str, name: str, delay_s: float, images: int) -> tuple[float, list[float]]:
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=60) as http:
        started = time.time()
        created = await http.post("/api/batches", json=reference_spec(name, delay_s, images))
        created.raise_for_status()
        return await follow(url, created.json()["batch_id"], started)


async def hammer(url: str, clients: int, duration_s: float, batch_ids: list[str], load: Load) -> None:
    deadline = time.monotonic() + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def client(number: int, http: httpx.AsyncClient) -> None:
        rng = random.Random(number)
        while time.monotonic() < deadline:
            roll = rng.random()
            if roll < 0.70:
                op, request = "status", http.get(f"/api/batches/{rng.choice(batch_ids)}")
            elif roll < 0.95:
                op, request = "list", http.get("/api/batches", params={"limit": 20})
            else:
                key = f"bench-load-{rng.randrange(5)}"
                spec = {"name": key, "workflow": delay_graph(0.0, prefix="bench/load"), "dry_run": True}
                op, request = "submit", http.post("/api/batches", json=spec, headers={"Idempotency-Key": key})
            began = time.perf_counter()
            try:
                response = await request
                ok = response.status_code < 400
            except httpx.HTTPError:
                ok = False
            load.latencies[op].append(time.perf_counter() - began)
            load.errors[op] += not ok

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) as http:
        await asyncio.gather(*(client(number, http) for number in range(clients)))


def load_main(url: str, clients: int, duration_s: float, batch_ids: list[str]) -> None:
    """The load clients' own process: hammer, then print every latency and error count as one JSON line."""
    load = Load()
    asyncio.run(hammer(url, clients, duration_s, batch_ids, load))
    print(json.dumps({"latencies": load.latencies, "errors": load.errors}))


async def run_load(url: str, clients: int, duration_s: float, batch_ids: list[str]) -> tuple[Load, float]:
    """The load in a child process; returns what it measured and its CPU seconds."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--load", url, str(clients), str(duration_s), ",".join(batch_ids),
        env={**os.environ, "BENCH_API_KEY": KEY}, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    cpu = 0.0
    while process.returncode is None:  # its CPU, read while it lives (a reaped child's is gone)
        cpu = max(cpu, cpu_seconds(process.pid, descendants=False))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), 0.5)
    out, _ = await process.communicate()
    measured = json.loads(out.decode().strip().splitlines()[-1])
    load = Load()
    load.latencies.update(measured["latencies"])
    load.errors.update(measured["errors"])
    return load, cpu


def cpu_snapshot(bench: Bench, processes: dict[str, int]) -> dict[str, float]:
    """CPU seconds so far of each platform process (with its children: the flow runs of `serve`)."""
    snapshot = {name: cpu_seconds(pid) for name, pid in processes.items()}
    snapshot.update({name: value for name, value in bench.cpu_snapshot().items() if name != "client"})
    snapshot["bench"] = cpu_seconds(os.getpid(), descendants=False)
    return snapshot


async def measure(bench: Bench, url: str, *, clients: int, duration_s: float, delay_s: float, images: int,
                  processes: dict[str, int], record_items: int) -> dict[str, Any]:  # fmt: skip
    await warm_up(bench)
    alone, quiet_latencies = await run_reference(url, "bench-alone", delay_s, images)
    print(f"  reference batch alone: {alone:.2f} s", flush=True)
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        listed = (await http.get("/api/batches", params={"limit": 5})).json()["batches"]
    before, began = cpu_snapshot(bench, processes), time.monotonic()
    loaded_task = asyncio.create_task(run_reference(url, "bench-loaded", delay_s, images))
    load, load_cpu = await run_load(url, clients, duration_s, [batch["batch_id"] for batch in listed])
    loaded, event_latencies = await loaded_task
    window_s = time.monotonic() - began
    after = cpu_snapshot(bench, processes)
    cpu_share = {name: round((after[name] - before[name]) / window_s, 2) for name in after}
    cpu_share["load-clients"] = round(load_cpu / window_s, 2)
    print(f"  reference batch under load: {loaded:.2f} s", flush=True)
    finished = await finished_status_reads(url, AUTH, deployment=DEPLOYMENT, output_root=bench.output_root,
                                           workflow=delay_graph(0.5, prefix="bench/finished"), items=record_items,
                                           server=bench.comfybatch_name(bench.servers[0]))  # fmt: skip
    print(f"  finished {record_items}-image batch: status p99 {finished['p99_ms']} ms", flush=True)
    requests = {op: len(values) for op, values in load.latencies.items()}
    return {
        "clients": clients, "duration_s": duration_s, "requests": requests,
        "requests_per_s": round(sum(requests.values()) / duration_s, 1),
        "errors": dict(load.errors), "error_total": sum(load.errors.values()),
        **{f"{op}_p50_ms": _ms(values, 0.50) for op, values in load.latencies.items()},
        **{f"{op}_p99_ms": _ms(values, 0.99) for op, values in load.latencies.items()},
        "event_alone_p50_ms": _ms(quiet_latencies, 0.50), "event_alone_p99_ms": _ms(quiet_latencies, 0.99),
        "event_count": len(event_latencies), "event_p50_ms": _ms(event_latencies, 0.50),
        "event_p99_ms": _ms(event_latencies, 0.99),
        "event_mean_ms": round(1000 * statistics.fmean(event_latencies), 1) if event_latencies else None,
        "batch_alone_s": round(alone, 2), "batch_loaded_s": round(loaded, 2),
        "slowdown": round(loaded / alone - 1, 3) if alone else None,
        "cpu_share": cpu_share, "finished_status": finished,
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 clients for 10 s, a 30-image batch (CI)")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--load", nargs=4, metavar=("URL", "CLIENTS", "SECONDS", "IDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.load:  # the load clients' own process
        url, clients_text, seconds_text, ids = args.load
        load_main(url, int(clients_text), float(seconds_text), ids.split(","))
        return 0
    clients, duration_s, delay_s, images = (10, 10.0, 0.2, 30) if args.quick else (50, 60.0, 0.5, 100)
    record_items = 10_000 if args.quick else 100_000
    print(f"api: {clients} clients for {duration_s:g} s; reference batch {images} x Delay {delay_s:g} s "
          f"on {args.servers} servers", flush=True)  # fmt: skip
    with bench_environment(args.servers) as bench:
        processes, url = start_platform(bench)
        try:
            pids = {"serve": processes[0].pid, "dashboard": processes[1].pid}
            result = asyncio.run(measure(bench, url, clients=clients, duration_s=duration_s, delay_s=delay_s,
                                         images=images, processes=pids, record_items=record_items))  # fmt: skip
        finally:
            for process in processes:
                stop_process(process)
    result["quick"] = args.quick
    targets = {"status_p99_ms": 50, "list_p99_ms": 100, "event_p99_ms": 100}
    for name, value in result.items():
        mark = f"  (target < {targets[name]})" if name in targets else ""
        print(f"{name:>18}: {value}{mark}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
