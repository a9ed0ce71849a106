"""How busy does comfybatch keep a fleet? The same Delay workload fed directly and through the flow.

    .venv/bin/python bench/utilisation.py [--servers 4] [--delay 0.5] [--images 80] [--py-spy]

Prints figures (no assertions) and writes `bench/out/utilisation-timeline.png`; see `bench/README.md`.
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections import deque
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from _common import OUT_DIR, Bench, NodeRun, Phase, PromptSpan, bench_environment, idle_gaps
from _profile import SpyRecorder
from _timeline import draw_timeline

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import BatchIncomplete
from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore

SLOTS = 2  # comfybatch's default `slots` per server: one prompt running, one queued behind it
NONCE_INPUT = "2.inputs.nonce"


def delay_graph(seconds: float, *, nonce: str = "", prefix: str = "bench/delay") -> dict[str, Any]:
    """EmptyImage(16x16) -> ComfybatchDelay -> SaveImage, API format."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ComfybatchDelay", "inputs": {"image": ["1", 0], "seconds": seconds, "nonce": nonce}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


async def warm_up(bench: Bench) -> None:
    """One trivial prompt per server, so neither phase pays ComfyUI's first-execution costs."""

    async def one(index: int, url: str) -> None:
        async with ComfyClient(url) as comfy:
            await comfy.run(ApiWorkflow(delay_graph(0.0, nonce=f"warmup-{uuid.uuid4().hex}", prefix="bench/warmup")))

    await asyncio.gather(*(one(i, server.url) for i, server in enumerate(bench.servers)))


async def feed_directly(bench: Bench, *, delay_s: float, images: int, run_id: str) -> Phase:
    """The physical limit: `SLOTS` lanes per server pull from one shared queue, `ComfyClient` only."""
    prefix = f"direct-{run_id}-"
    queue = deque(
        ApiWorkflow(delay_graph(delay_s, nonce=f"{prefix}{index:05d}", prefix=f"bench/direct/{index:05d}"))
        for index in range(images)
    )
    spans: list[PromptSpan] = []
    downloads = bench.root / "direct-downloads"

    async def lane(comfy: ComfyClient, name: str) -> None:
        while queue:
            workflow = queue.popleft()
            result = await comfy.run(workflow)
            for output in result.outputs:  # same work as a comfybatch job: fetch what was saved
                await comfy.download(output, downloads / output.filename)
            spans.append(PromptSpan(name, result.queued_at or 0.0, result.started_at or 0.0, result.finished_at))

    cpu_before = bench.cpu_snapshot()
    called_at = time.time()
    async with AsyncExitStack() as stack:
        clients: list[tuple[ComfyClient, str]] = []
        for server in bench.servers:
            comfy = ComfyClient(server.url)
            stack.push_async_callback(comfy.aclose)
            clients.append((comfy, bench.comfybatch_name(server)))
        async with asyncio.TaskGroup() as group:
            for comfy, name in clients:
                for _ in range(SLOTS):
                    group.create_task(lane(comfy, name))
    returned_at = time.time()
    return Phase("direct", called_at, returned_at, spans, _cpu_delta(bench, cpu_before), nonce_prefix=prefix)


async def run_comfybatch(bench: Bench, *, delay_s: float, images: int, run_id: str) -> Phase:
    """`generate_batch` on the same workload; prompt times come from the batch's manifest."""
    prefix = f"cb-{run_id}-"
    spec = BatchSpec(
        name=f"bench-{run_id}", workflow=delay_graph(delay_s), bindings={"nonce": NONCE_INPUT},
        sweep=Sweep(axes={"nonce": [f"{prefix}{index:05d}" for index in range(images)]}),
    )  # fmt: skip
    cpu_before, log_before = bench.cpu_snapshot(), bench.prefect_log_size()
    called_at = time.time()
    error = None
    try:
        await generate_batch(spec)
    except BatchIncomplete as exc:
        error = str(exc)
    returned_at = time.time()
    cpu = _cpu_delta(bench, cpu_before)
    manifest = read_manifest(OutputStore(str(bench.output_root)), spec.name)
    spans: list[PromptSpan] = []
    if manifest is not None:
        for row in manifest[manifest["status"] == "done"].itertuples():
            times = [row.queued_at, row.started_at, row.finished_at]
            spans.append(PromptSpan(str(row.server), *(t.timestamp() for t in times)))
    phase = Phase("comfybatch", called_at, returned_at, spans, cpu, nonce_prefix=prefix, error=error)
    phase.prefect_503s = bench.prefect_503s(log_before, bench.prefect_log_size())
    return phase


def _cpu_delta(bench: Bench, before: dict[str, float]) -> dict[str, float]:
    return {name: seconds - before.get(name, 0.0) for name, seconds in bench.cpu_snapshot().items()}


def report(phases: list[Phase], runs: dict[str, list[NodeRun]], *, servers: int, delay_s: float, images: int) -> None:
    """Print the figures table."""
    ideal = images * delay_s / servers
    direct, flow = phases
    rows: list[tuple[str, ...]] = []

    def row(label: str, fmt: str, value: Any) -> None:
        rows.append((label, *(fmt.format(value(phase)) if value(phase) is not None else "-" for phase in phases)))

    row("ideal = images x delay / servers [s]", "{:.2f}", lambda _: ideal)
    row("makespan: call -> return [s]", "{:.2f}", lambda p: p.makespan_s)
    row("first submit -> last finish [s]", "{:.2f}", lambda p: p.span_s)
    row("set-up: call -> first submit [s]", "{:.2f}", lambda p: p.first_submit - p.called_at)
    row("wrap-up: last finish -> return [s]", "{:.2f}", lambda p: p.returned_at - p.last_finish)
    row("utilisation = ideal / makespan", "{:.1%}", lambda p: ideal / p.makespan_s)
    row("utilisation = ideal / (submit..finish)", "{:.1%}", lambda p: ideal / p.span_s if p.span_s > 0 else None)
    row("server busy (node journal / span)", "{:.1%}", lambda p: _busy(runs[p.name], servers, p.span_s))
    row("idle gap between prompts, mean [ms]", "{:.0f}", lambda p: _gap_ms(runs[p.name], statistics.fmean))
    row("idle gap between prompts, p95 [ms]", "{:.0f}", lambda p: _gap_ms(runs[p.name], _p95))
    row("client-seen run - node run, mean [ms]", "{:.0f}", lambda p: _waste_ms(p, runs[p.name]))
    row("prompts done", "{}", lambda p: len(p.prompts))
    for component in ("client", "prefect-server", "comfyui"):
        row(f"CPU {component} [s]", "{:.1f}", lambda p, c=component: p.cpu_s.get(c))
    row("CPU client per image [ms]", "{:.1f}", lambda p: 1000 * p.cpu_s.get("client", 0.0) / max(len(p.prompts), 1))
    row("Prefect API 503s (SQLite locked)", "{}", lambda p: sum(p.prefect_503s.values()) if p is flow else None)

    width = max(len(label) for label, *_ in rows)
    print()
    print(f"comfybatch utilisation: {servers} servers x {SLOTS} slots, Delay {delay_s:g} s, {images} images")
    print(f"{'':{width}}  {'direct':>12}  {'comfybatch':>12}")
    for label, *values in rows:
        print(f"{label:{width}}  {values[0]:>12}  {values[1]:>12}")
    print()
    print(f"ratio comfybatch / direct: makespan {flow.makespan_s / direct.makespan_s:.2f}x, "
          f"submit..finish {flow.span_s / direct.span_s:.2f}x")  # fmt: skip
    per_job = (flow.makespan_s - direct.makespan_s) * servers / images
    per_job_span = (flow.span_s - direct.span_s) * servers / images
    print(f"orchestration overhead per job (extra server-idle time = (comfybatch - direct) x servers / images): "
          f"{1000 * per_job:.0f} ms by makespan, {1000 * per_job_span:.0f} ms by submit..finish")  # fmt: skip
    if flow.prefect_503s:
        listed = ", ".join(f"{name} {count}" for name, count in flow.prefect_503s.most_common())
        print(f"Prefect server 503s ('database is locked', the client backs off 2**n s each): {listed}")
    for phase in phases:
        if phase.error:
            print(f"{phase.name}: {phase.error}")


def _busy(runs: list[NodeRun], servers: int, span_s: float) -> float | None:
    return sum(run.end - run.start for run in runs) / (servers * span_s) if runs and span_s > 0 else None


def _gap_ms(runs: list[NodeRun], stat: Any) -> float | None:
    gaps = idle_gaps(runs)
    return 1000 * stat(gaps) if gaps else None


def _p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.95 * (len(values) - 1)))]


def _waste_ms(phase: Phase, runs: list[NodeRun]) -> float | None:
    """Mean (client-seen run time - node execution time): history read, event latency, result handling."""
    if not phase.prompts or not runs:
        return None
    client = statistics.fmean(p.finished_at - p.started_at for p in phase.prompts)
    return 1000 * (client - statistics.fmean(run.end - run.start for run in runs))


async def measure(bench: Bench, args: argparse.Namespace, spy: SpyRecorder | None) -> list[Phase]:
    run_id = uuid.uuid4().hex[:8]
    print("  warming up every server ...", flush=True)
    await warm_up(bench)
    print(f"  direct feeding: {args.images} images ...", flush=True)
    direct = await feed_directly(bench, delay_s=args.delay, images=args.images, run_id=run_id)
    print(f"  comfybatch generate_batch: {args.images} images ...", flush=True)
    if spy is not None:
        spy.start({"client": os.getpid(), "prefect-server": bench.cpu_groups()["prefect-server"][0]})
    try:
        flow = await run_comfybatch(bench, delay_s=args.delay, images=args.images, run_id=run_id)
    finally:
        if spy is not None:
            spy.stop()
    return [direct, flow]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=4, help="local ComfyUI servers (default 4)")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds each prompt's Delay node sleeps")
    parser.add_argument("--images", type=int, default=80, help="images per phase")
    parser.add_argument("--timeline", type=Path, default=OUT_DIR / "utilisation-timeline.png")
    parser.add_argument("--py-spy", action="store_true", help="sample client and Prefect server during comfybatch")
    args = parser.parse_args(argv)
    spy = SpyRecorder(OUT_DIR) if args.py_spy else None
    print(f"starting {args.servers} ComfyUI servers and a Prefect server ...", flush=True)
    with bench_environment(args.servers) as bench:
        phases = asyncio.run(measure(bench, args, spy))
        runs = {phase.name: bench.node_runs(phase.nonce_prefix) for phase in phases}
        lanes = [(bench.comfybatch_name(s), f"{s.name} :{s.port}") for s in bench.servers]
    report(phases, runs, servers=args.servers, delay_s=args.delay, images=args.images)
    title = f"{args.servers} servers x {SLOTS} slots, Delay {args.delay:g} s, {args.images} images per phase"
    print(f"timeline: {draw_timeline(phases, runs, lanes, args.timeline, title=title)}")
    if spy is not None:
        spy.summarise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
