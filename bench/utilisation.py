"""How busy does comfybatch keep a fleet? The same Delay workload fed directly and through the flow.

    .venv/bin/python bench/utilisation.py [--servers 4] [--delay 0.5] [--images 80] [--py-spy]

Prints figures (no assertions) and writes `bench/out/utilisation-timeline.png`; see `bench/README.md`.
"""

import argparse
import asyncio
import statistics
import sys
import uuid
from pathlib import Path
from typing import Any

from _common import (
    DIRECT_LANES,
    OUT_DIR,
    Bench,
    NodeRun,
    Phase,
    bench_environment,
    busy_fraction,
    direct_then_comfybatch,
    gap_ms,
    p95,
)
from _profile import SpyRecorder
from _timeline import draw_timeline

SLOTS = DIRECT_LANES  # comfybatch's default `slots` per server is the same


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
    row("server busy (node journal / span)", "{:.1%}", lambda p: busy_fraction(runs[p.name], servers, p.span_s))
    row("idle gap between prompts, mean [ms]", "{:.0f}", lambda p: gap_ms(runs[p.name], statistics.fmean))
    row("idle gap between prompts, p95 [ms]", "{:.0f}", lambda p: gap_ms(runs[p.name], p95))
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


def _waste_ms(phase: Phase, runs: list[NodeRun]) -> float | None:
    """Mean (client-seen run time - node execution time): history read, event latency, result handling."""
    if not phase.prompts or not runs:
        return None
    client = statistics.fmean(p.finished_at - p.started_at for p in phase.prompts)
    return 1000 * (client - statistics.fmean(run.end - run.start for run in runs))


async def measure(bench: Bench, args: argparse.Namespace, spy: SpyRecorder | None) -> list[Phase]:
    run_id = uuid.uuid4().hex[:8]
    return list(await direct_then_comfybatch(bench, delay_s=args.delay, images=args.images, run_id=run_id, spy=spy))


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
        lanes = bench.lanes()
    report(phases, runs, servers=args.servers, delay_s=args.delay, images=args.images)
    title = f"{args.servers} servers x {SLOTS} slots, Delay {args.delay:g} s, {args.images} images per phase"
    print(f"timeline: {draw_timeline(phases, runs, lanes, args.timeline, title=title)}")
    if spy is not None:
        spy.summarise()
    return 0


if __name__ == "__main__":
    sys.exit(main())
