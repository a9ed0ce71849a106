"""Fleet benchmark: the same Delay workload fed directly (the limit), by comfybatch, and by a peer client.

    .venv/bin/python bench/fleet.py --scenario 1|2|3|4 [--quick] [--servers N --delay S --images M] [--py-spy]

Scenario 4 is small triggered batches (`bench/_triggered.py`): `batches` runs of the served `generate-batch`
deployment, one after another, each of `images / batches` prompts, against direct feeding of each batch alone.
It has no peer figure: the peer client has no deployment to trigger, and feeding it 10 prompts measures the
same thing as direct feeding.

Prints a table and, as its last line, JSON; writes `bench/out/fleet-s<N>-timeline.png`. See `bench/README.md`.
"""

import argparse
import asyncio
import json
import statistics
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any

from _common import (
    DIRECT_LANES,
    OUT_DIR,
    Bench,
    NodeRun,
    Phase,
    PromptSpan,
    bench_environment,
    busy_fraction,
    cpu_delta,
    delay_graph,
    direct_then_comfybatch,
    gap_ms,
    gc_in_step,
    p95,
    wait_prefect_idle,
)
from _profile import SpyRecorder
from _timeline import draw_timeline
from _triggered import measure_triggered

from comfybatch.settings import get_settings


@dataclass(frozen=True)
class Scenario:
    servers: int
    delay_s: float
    images: int
    proxy_delay_s: float = 0.0
    target_utilisation: float = 0.0
    target_vs_peer: float | None = None
    batches: int = 1  # scenario 4: the images come in this many batches, one after another


# Issue 6 §1. Utilisation = direct makespan / comfybatch makespan; vs peer = peer makespan / comfybatch makespan.
SCENARIOS = {
    1: Scenario(servers=8, delay_s=1.0, images=400, target_utilisation=0.98),
    2: Scenario(servers=8, delay_s=0.1, images=2000, target_utilisation=0.90),
    3: Scenario(servers=8, delay_s=0.5, images=400, proxy_delay_s=0.025, target_utilisation=0.97, target_vs_peer=1.25),
    # Issue 11: sum of batch makespans <= 1.25x direct feeding of each batch, i.e. utilisation >= 0.8.
    4: Scenario(servers=4, delay_s=0.5, images=200, batches=20, target_utilisation=0.8),
}
QUICK = {  # the same shapes, small enough for CI (< 2 min with start-up)
    1: Scenario(servers=2, delay_s=0.5, images=24, target_utilisation=0.98),
    2: Scenario(servers=2, delay_s=0.1, images=100, target_utilisation=0.90),
    3: Scenario(servers=2, delay_s=0.5, images=24, proxy_delay_s=0.025, target_utilisation=0.97, target_vs_peer=1.25),
    4: Scenario(servers=2, delay_s=0.5, images=60, batches=6, target_utilisation=0.8),
}


def feed_peer(bench: Bench, *, delay_s: float, images: int, run_id: str) -> Phase:
    """`comfy-api-simplified`, used as its README shows: one thread per server, `queue_and_wait_images` each."""
    from comfy_api_simplified import (  # type: ignore[import-untyped]  # the bench extra; untyped
        ComfyApiWrapper,
        ComfyWorkflowWrapper,
    )

    prefix = f"peer-{run_id}-"
    queue = deque(range(images))
    spans: list[PromptSpan] = []
    errors: list[str] = []

    def thread(url: str, name: str) -> None:
        api = ComfyApiWrapper(url)
        while True:
            try:
                index = queue.popleft()  # deque.popleft is atomic: a thread-safe shared queue
            except IndexError:
                return
            graph = delay_graph(delay_s, nonce=f"{prefix}{index:05d}", prefix=f"bench/peer/{index:05d}")
            queued_at = time.time()
            try:
                api.queue_and_wait_images(ComfyWorkflowWrapper(graph), "Save Image")
            except Exception as exc:  # a third-party client: count its failures, keep the phase going
                errors.append(repr(exc))
                continue
            spans.append(PromptSpan(name, queued_at, queued_at, time.time()))

    cpu_before = bench.cpu_snapshot()
    called_at = time.time()
    threads = [threading.Thread(target=thread, args=(bench.url_of(s), bench.comfybatch_name(s))) for s in bench.servers]
    for worker in threads:
        worker.start()
    for worker in threads:
        worker.join()
    returned_at = time.time()
    phase = Phase("peer", called_at, returned_at, spans, cpu_delta(bench, cpu_before), nonce_prefix=prefix)
    if errors:
        phase.error = f"{len(errors)} failed, first: {errors[0]}"
    return phase


async def measure(bench: Bench, scenario: Scenario, spy: SpyRecorder | None) -> list[Phase]:
    run_id = uuid.uuid4().hex[:8]
    direct, flow = await direct_then_comfybatch(bench, delay_s=scenario.delay_s, images=scenario.images,
                                                run_id=run_id, spy=spy)  # fmt: skip
    waited = await wait_prefect_idle(bench)
    print(f"  (Prefect server worked off its backlog in {waited:.0f} s)", flush=True)
    await gc_in_step(bench, last_prompt_at=flow.returned_at)
    print(f"  peer comfy-api-simplified: {scenario.images} images ...", flush=True)
    peer = await asyncio.to_thread(feed_peer, bench, delay_s=scenario.delay_s, images=scenario.images, run_id=run_id)
    return [direct, flow, peer]


def report(phases: list[Phase], runs: dict[str, list[NodeRun]], scenario: Scenario) -> list[tuple[str, ...]]:
    """The figures table, one column per phase."""
    ideal = scenario.images * scenario.delay_s / scenario.servers
    rows: list[tuple[str, ...]] = []

    def row(label: str, fmt: str, value: Any) -> None:
        cells = []
        for phase in phases:
            figure = value(phase)
            cells.append(fmt.format(figure) if figure is not None else "-")
        rows.append((label, *cells))

    row("makespan: call -> return [s]", "{:.2f}", lambda p: p.makespan_s)
    row("ideal / makespan", "{:.1%}", lambda p: ideal / p.makespan_s)
    row("first submit -> last finish [s]", "{:.2f}", lambda p: p.span_s)
    row("set-up: call -> first submit [s]", "{:.2f}", lambda p: p.first_submit - p.called_at)
    row("flow run Running -> first submit [s]", "{:.2f}", lambda p: p.running_at and p.first_submit - p.running_at)
    row("wrap-up: last finish -> return [s]", "{:.2f}", lambda p: p.returned_at - p.last_finish)
    row("first contact's set-up (fleet new to Prefect) [s]", "{:.2f}", lambda p: p.first_contact_setup_s)
    servers = scenario.servers
    row("server busy (node journal / span)", "{:.1%}", lambda p: busy_fraction(runs[p.name], servers, p.span_s))
    row("idle gap between prompts, mean [ms]", "{:.0f}", lambda p: gap_ms(runs[p.name], statistics.fmean))
    row("idle gap between prompts, p95 [ms]", "{:.0f}", lambda p: gap_ms(runs[p.name], p95))
    row("prompts done", "{}", lambda p: len(p.prompts))
    for component in ("client", "prefect-server", "comfyui"):
        row(f"CPU {component} [s]", "{:.1f}", lambda p, c=component: p.cpu_s.get(c))
    row("CPU client per image [ms]", "{:.1f}", lambda p: 1000 * p.cpu_s.get("client", 0.0) / max(len(p.prompts), 1))
    return rows


def figures(phases: list[Phase], scenario: Scenario, *, quick: bool, number: int) -> dict[str, Any]:
    direct, flow, peer = phases
    utilisation = direct.makespan_s / flow.makespan_s
    vs_peer = peer.makespan_s / flow.makespan_s
    met = {"utilisation": utilisation >= scenario.target_utilisation}
    if scenario.target_vs_peer is not None:
        met["vs_peer"] = vs_peer >= scenario.target_vs_peer
    return {
        "bench": "fleet", "scenario": number, "quick": quick, "servers": scenario.servers,
        "delay_s": scenario.delay_s, "images": scenario.images, "proxy_delay_s": scenario.proxy_delay_s,
        "slots": get_settings().default_slots, "direct_lanes": DIRECT_LANES,
        "ideal_s": round(scenario.images * scenario.delay_s / scenario.servers, 3),
        "makespan_s": {p.name: round(p.makespan_s, 3) for p in phases},
        "done": {p.name: len(p.prompts) for p in phases},
        "utilisation": round(utilisation, 4), "vs_peer": round(vs_peer, 4),
        "setup_s": round(flow.first_submit - flow.called_at, 3),
        "running_to_first_submit_s": round(flow.first_submit - flow.running_at, 3) if flow.running_at else None,
        "wrapup_s": round(flow.returned_at - flow.last_finish, 3),
        "first_contact_setup_s": flow.first_contact_setup_s,
        "target_utilisation": scenario.target_utilisation, "target_vs_peer": scenario.target_vs_peer, "met": met,
        "errors": {p.name: p.error for p in phases if p.error},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", type=int, choices=sorted(SCENARIOS), default=1)
    parser.add_argument("--quick", action="store_true", help="2 servers and a few dozen images (CI)")
    parser.add_argument("--servers", type=int, help="override the scenario's server count")
    parser.add_argument("--delay", type=float, help="override the scenario's Delay seconds")
    parser.add_argument("--images", type=int, help="override the scenario's image count")
    parser.add_argument("--py-spy", action="store_true", help="sample client + Prefect server during comfybatch")
    parser.add_argument("--batches", type=int, help="override scenario 4's batch count")
    parser.add_argument("--serve-args", default="", help="scenario 4: extra `comfybatch serve` arguments")
    args = parser.parse_args(argv)
    base = (QUICK if args.quick else SCENARIOS)[args.scenario]
    scenario = Scenario(
        servers=args.servers or base.servers, delay_s=args.delay or base.delay_s, images=args.images or base.images,
        proxy_delay_s=base.proxy_delay_s, target_utilisation=base.target_utilisation,
        target_vs_peer=base.target_vs_peer, batches=args.batches or base.batches,
    )  # fmt: skip
    if args.scenario == 4:
        return main_triggered(scenario, quick=args.quick, serve_args=args.serve_args.split())
    spy = SpyRecorder(OUT_DIR) if args.py_spy else None
    proxied = f", behind a {1000 * scenario.proxy_delay_s:g} ms proxy each way" if scenario.proxy_delay_s else ""
    title = (f"scenario {args.scenario}{' (quick)' if args.quick else ''}: {scenario.servers} servers, "
             f"Delay {scenario.delay_s:g} s, {scenario.images} images{proxied}")  # fmt: skip
    print(f"{title}\nstarting {scenario.servers} ComfyUI servers and a Prefect server ...", flush=True)
    with bench_environment(scenario.servers, proxy_delay_s=scenario.proxy_delay_s) as bench:
        phases = asyncio.run(measure(bench, scenario, spy))
        runs = {phase.name: bench.node_runs(phase.nonce_prefix) for phase in phases}
        lanes = bench.lanes()
    rows = report(phases, runs, scenario)
    width = max(len(label) for label, *_ in rows)
    print(f"\n{title}")
    print(f"{'':{width}}" + "".join(f"  {p.name:>12}" for p in phases))
    for label, *values in rows:
        print(f"{label:{width}}" + "".join(f"  {value:>12}" for value in values))
    result = figures(phases, scenario, quick=args.quick, number=args.scenario)
    print(f"\nutilisation = direct / comfybatch makespan: {result['utilisation']:.3f} "
          f"(target {scenario.target_utilisation}); comfybatch vs peer throughput: {result['vs_peer']:.2f}x"
          + (f" (target {scenario.target_vs_peer}x)" if scenario.target_vs_peer else ""))  # fmt: skip
    for phase in phases:
        if phase.error:
            print(f"{phase.name}: {phase.error}")
    path = OUT_DIR / f"fleet-s{args.scenario}{'-quick' if args.quick else ''}-timeline.png"
    print(f"timeline: {draw_timeline(phases, runs, lanes, path, title=title)}")
    if spy is not None:
        spy.summarise()
    print(json.dumps(result))
    return 0


def main_triggered(scenario: Scenario, *, quick: bool, serve_args: list[str]) -> int:
    """Scenario 4: small batches through the served deployment, one after another."""
    per_batch = scenario.images // scenario.batches
    title = (f"scenario 4{' (quick)' if quick else ''}: {scenario.batches} triggered batches of {per_batch}, "
             f"{scenario.servers} servers, Delay {scenario.delay_s:g} s")  # fmt: skip
    print(f"{title}\nstarting {scenario.servers} ComfyUI servers and a Prefect server ...", flush=True)
    with bench_environment(scenario.servers) as bench:
        found = asyncio.run(measure_triggered(bench, batches=scenario.batches, images=per_batch,
                                              delay_s=scenario.delay_s, serve_args=serve_args))  # fmt: skip
    print(f"\n{title}")
    print(f"{'per batch [s]':<34}{'p50':>8}{'p95':>8}")
    labels = {"wait_s": "call -> Pending (runner poll)", "start_s": "Pending -> Running (process start)",
              "setup_s": "set-up: Running -> first submit", "first_image_s": "time to first image",
              "wrapup_s": "wrap-up: last finish -> end", "makespan_s": "makespan: call -> end"}  # fmt: skip
    for name, label in labels.items():
        print(f"{label:<34}{found['phases'][name]['p50']:>8.2f}{found['phases'][name]['p95']:>8.2f}")
    print(f"sum of makespans: comfybatch {found['comfybatch_sum_s']:.1f} s, direct {found['direct_sum_s']:.1f} s: "
          f"utilisation {found['utilisation']:.3f} (target {scenario.target_utilisation}, i.e. <= 1.25x)")  # fmt: skip
    result = {
        "bench": "fleet", "scenario": 4, "quick": quick, "servers": scenario.servers, "delay_s": scenario.delay_s,
        "batches": scenario.batches, "images_per_batch": per_batch, "serve_args": serve_args, **found,
        "first_image_s": found["phases"]["first_image_s"],
        "no_vs_peer": "the peer client has no deployment to trigger; fed 10 prompts it is direct feeding",
        "target_utilisation": scenario.target_utilisation,
        "met": {"utilisation": found["utilisation"] >= scenario.target_utilisation},
    }  # fmt: skip
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
