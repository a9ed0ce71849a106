"""Scenario 4 of `fleet.py`: small batches triggered through the served `generate-batch` deployment, as the API
does (`create_flow_run_from_deployment`), one after another; against direct feeding of each batch's prompts.

Per batch, from the flow run's state history and the batch's manifest (one clock, this machine):
wait = call -> Pending (the runner found it), start = Pending -> Running (its process is up and running the flow),
set-up = Running -> first POST /prompt, first image = call -> first prompt finished, wrap-up = last prompt finished
-> the flow run's end, makespan = call -> the flow run's end.
"""

import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from _common import (
    NONCE_INPUT,
    Bench,
    Phase,
    PromptSpan,
    cpu_delta,
    cpu_seconds,
    delay_graph,
    feed_directly,
    p95,
    stop_process,
    warm_up,
)
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType

from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore

_TERMINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
_PHASES = ("wait_s", "start_s", "setup_s", "first_image_s", "wrapup_s", "makespan_s")


@dataclass(frozen=True)
class Triggered:
    """One batch run through the deployment, its times in epoch seconds."""

    called_at: float
    pending_at: float
    running_at: float
    ended_at: float
    spans: list[PromptSpan]
    state: str

    @property
    def figures(self) -> dict[str, float]:
        first_submit = min((s.queued_at for s in self.spans), default=self.ended_at)
        first_finish = min((s.finished_at for s in self.spans), default=self.ended_at)
        last_finish = max((s.finished_at for s in self.spans), default=self.ended_at)
        return {
            "wait_s": self.pending_at - self.called_at, "start_s": self.running_at - self.pending_at,
            "setup_s": first_submit - self.running_at, "first_image_s": first_finish - self.called_at,
            "wrapup_s": self.ended_at - last_finish, "makespan_s": self.ended_at - self.called_at,
        }  # fmt: skip


@contextlib.contextmanager
def serving(bench: Bench, *, serve_args: Sequence[str] = ()) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m comfybatch.cli serve` on the bench's Prefect server and fleet, as `comfybatch up` starts it
    (`serve_args`, e.g. `--cold --poll-s 10`, measure other ways of serving)."""
    env = {**os.environ, "PREFECT_API_URL": bench.prefect.api_url}
    log = bench.root / "serve.log"
    with log.open("ab") as sink:
        process = subprocess.Popen([sys.executable, "-m", "comfybatch.cli", "serve", *serve_args], env=env,
                                   cwd=bench.root, stdout=sink, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        url = f"{bench.prefect.api_url}/deployments/name/{GENERATE_BATCH}"
        while httpx.get(url, timeout=5).status_code != 200:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"comfybatch serve did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        time.sleep(2.0)  # the runner's first poll and its start-up CPU are behind us
        yield process
    finally:
        stop_process(process)


async def trigger(bench: Bench, spec: BatchSpec) -> Triggered:
    """Create a run of generate-batch with `spec`, wait for it to end, read its states and manifest."""
    async with get_client() as client:
        deployment = await client.read_deployment_by_name(GENERATE_BATCH)
        called_at = time.time()
        run: FlowRun = await client.create_flow_run_from_deployment(
            deployment.id, parameters={"spec": spec.model_dump(mode="json")}, name=spec.name, tags=["bench"]
        )
        while run.state is None or run.state.type not in _TERMINAL:
            await asyncio.sleep(0.1)
            run = await client.read_flow_run(run.id)
        states = await client.read_flow_run_states(run.id)
    first = {}
    for state in sorted(states, key=lambda s: s.timestamp):
        first.setdefault(state.type, state.timestamp.timestamp())
    ended_at = run.end_time.timestamp() if run.end_time else time.time()
    manifest = read_manifest(OutputStore(str(bench.output_root)), spec.name)
    spans = []
    if manifest is not None:
        for row in manifest[manifest["status"] == "done"].itertuples():
            spans.append(PromptSpan(str(row.server), *(t.timestamp() for t in (row.queued_at, row.started_at,
                                                                                  row.finished_at))))  # fmt: skip
    pending_at = first.get(StateType.PENDING, called_at)
    return Triggered(called_at, pending_at, first.get(StateType.RUNNING, pending_at), ended_at, spans,
                     run.state.type.value if run.state else "?")  # fmt: skip


async def measure_triggered(
    bench: Bench, *, batches: int, images: int, delay_s: float, serve_args: Sequence[str] = ()
) -> dict[str, Any]:
    """Direct feeding of each batch's prompts, then the same batches through the served deployment."""
    run_id = uuid.uuid4().hex[:8]
    print("  warming up every server ...", flush=True)
    await warm_up(bench)
    print(f"  direct feeding: {batches} batches of {images} ...", flush=True)
    direct: list[Phase] = []
    for batch in range(batches):
        direct.append(await feed_directly(bench, delay_s=delay_s, images=images, run_id=f"{run_id}-{batch:03d}"))
    direct_sum = sum(phase.makespan_s for phase in direct)
    print(f"  comfybatch: {batches} batches of {images} through {GENERATE_BATCH} ...", flush=True)
    triggered: list[Triggered] = []
    with serving(bench, serve_args=serve_args) as serve:
        cpu_before, serve_before = bench.cpu_snapshot(), cpu_seconds(serve.pid)
        for batch in range(batches):
            spec = BatchSpec(
                name=f"bench4-{run_id}-{batch:03d}", workflow=delay_graph(delay_s), bindings={"nonce": NONCE_INPUT},
                sweep=Sweep(axes={"nonce": [f"cb-{run_id}-{batch:03d}-{index:05d}" for index in range(images)]}),
            )  # fmt: skip
            log_before = bench.prefect_log_size()
            triggered.append(one := await trigger(bench, spec))
            shown = "  ".join(f"{name} {value:.2f}" for name, value in one.figures.items())
            busy = bench.prefect_503s(log_before, bench.prefect_log_size())  # SQLite busy: the client retries later
            print(f"    batch {batch:2d} {one.state}: {shown}" + (f"  503s {dict(busy)}" if busy else ""), flush=True)
        cpu = cpu_delta(bench, cpu_before)
        cpu["serve"] = cpu_seconds(serve.pid) - serve_before
    sums = {name: [t.figures[name] for t in triggered] for name in _PHASES}
    comfybatch_sum = sum(sums["makespan_s"])
    return {
        "direct_sum_s": round(direct_sum, 3), "comfybatch_sum_s": round(comfybatch_sum, 3),
        "utilisation": round(direct_sum / comfybatch_sum, 4),
        "phases": {name: {"p50": round(statistics.median(values), 3), "p95": round(p95(values), 3)}
                   for name, values in sums.items()},
        "done": sum(len(t.spans) for t in triggered), "states": [t.state for t in triggered],
        "cpu_s": {name: round(value, 2) for name, value in cpu.items()},
    }  # fmt: skip
