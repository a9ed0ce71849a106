"""Orchestration overhead: trivial prompts as fast as the fleet takes them, next to Prefect's own no-op `.map`.

    .venv/bin/python bench/overhead.py [--quick] [--servers 4] [--images 2000]

Three phases in one run, in one process: (1) Prefect alone, a no-op task `.map`ped over N items;
(2) direct feeding of N weight-free prompts (Delay 0 s); (3) comfybatch on the same N prompts.
Prints a table and, as its last line, JSON. See `bench/README.md`.
"""

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from typing import Any

from _common import (
    OUT_DIR,
    Bench,
    Phase,
    bench_environment,
    cpu_seconds,
    feed_directly,
    run_comfybatch,
    wait_prefect_idle,
    warm_up,
)
from _profile import SpyRecorder
from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner

NOOP_WORKERS = 16  # Prefect's map throughput is flat above a handful of threads on 2 cores


@task
def noop(index: int) -> int:
    return index


@flow(name="bench-noop-map", task_runner=ThreadPoolTaskRunner(max_workers=NOOP_WORKERS))  # type: ignore[arg-type]
def noop_map(count: int) -> int:
    """Prefect's own floor: N no-op task runs through `.map`, resolved."""
    return len(noop.map(range(count)).result())


def time_noop_map(count: int) -> dict[str, float]:
    cpu_before, started = cpu_seconds(os.getpid(), descendants=False), time.time()
    noop_map(count)
    elapsed = time.time() - started
    cpu = cpu_seconds(os.getpid(), descendants=False) - cpu_before
    return {"seconds": elapsed, "per_s": count / elapsed, "cpu_ms_per_item": 1000 * cpu / count}


def rates(phase: Phase, images: int) -> dict[str, float]:
    return {"seconds": phase.makespan_s, "per_s": images / phase.makespan_s,
            "cpu_ms_per_item": 1000 * phase.cpu_s.get("client", 0.0) / images,
            "prefect_server_cpu_ms_per_item": 1000 * phase.cpu_s.get("prefect-server", 0.0) / images,
            "comfyui_cpu_ms_per_item": 1000 * phase.cpu_s.get("comfyui", 0.0) / images}  # fmt: skip


async def measure(bench: Bench, images: int, spy: SpyRecorder | None) -> tuple[Phase, Phase]:
    run_id = uuid.uuid4().hex[:8]
    await warm_up(bench)
    await wait_prefect_idle(bench)  # the no-op map's task runs are still being recorded
    print(f"  direct feeding: {images} trivial prompts ...", flush=True)
    direct = await feed_directly(bench, delay_s=0.0, images=images, run_id=run_id)
    print(f"  comfybatch: {images} trivial prompts ...", flush=True)
    if spy is not None:
        spy.start({"client": os.getpid(), "prefect-server": bench.cpu_groups()["prefect-server"][0]})
    try:
        flow_phase, _ = await run_comfybatch(bench, delay_s=0.0, images=images, run_id=run_id)
    finally:
        if spy is not None:
            spy.stop()
    return direct, flow_phase


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200 images (CI)")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--images", type=int, help="default 2000, or 200 with --quick")
    parser.add_argument("--py-spy", action="store_true", help="sample client + Prefect server during comfybatch")
    args = parser.parse_args(argv)
    spy = SpyRecorder(OUT_DIR) if args.py_spy else None
    images = args.images or (200 if args.quick else 2000)
    print(f"starting {args.servers} ComfyUI servers and a Prefect server ...", flush=True)
    with bench_environment(args.servers) as bench:
        print(f"  Prefect no-op .map: {images} task runs ...", flush=True)
        noop_figures = time_noop_map(images)
        direct, flow_phase = asyncio.run(measure(bench, images, spy))
    table: dict[str, dict[str, Any]] = {
        "prefect no-op .map": noop_figures,
        "direct (no Prefect)": rates(direct, images),
        "comfybatch": rates(flow_phase, images),
    }
    print(f"\noverhead: {args.servers} servers, {images} trivial prompts (Delay 0 s)")
    print(f"{'':22}{'seconds':>10}{'images/s':>10}{'client CPU ms/img':>20}{'Prefect srv ms/img':>20}")
    for name, row in table.items():
        server_ms = row.get("prefect_server_cpu_ms_per_item")
        print(f"{name:22}{row['seconds']:>10.2f}{row['per_s']:>10.1f}{row['cpu_ms_per_item']:>20.1f}"
              f"{'-' if server_ms is None else f'{server_ms:.1f}':>20}")  # fmt: skip
    ratio = table["comfybatch"]["per_s"] / table["prefect no-op .map"]["per_s"]
    print(f"comfybatch images/s / Prefect no-op .map runs/s: {ratio:.2f}")
    if flow_phase.error:
        print(f"comfybatch: {flow_phase.error}")
    result = {
        "bench": "overhead", "quick": args.quick, "servers": args.servers, "images": images,
        "done": {"direct": len(direct.prompts), "comfybatch": len(flow_phase.prompts)},
        **{key.split(" ")[0].replace("prefect", "noop_map"): {k: round(v, 3) for k, v in row.items()}
           for key, row in table.items()},
        "comfybatch_vs_noop_map": round(ratio, 3),
    }  # fmt: skip
    if spy is not None:
        spy.summarise()
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
