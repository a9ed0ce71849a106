"""Shared benchmark harness: a local ComfyUI fleet plus a Prefect server, configured for comfybatch.

Also the measurements every bench needs: prompt spans, CPU time per process group (from `/proc`),
and the test nodes' execution journal (the server-side truth of when each node ran).
"""

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName
from prefect.client.schemas.objects import StateType
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from comfybatch.blocks.server import name_from_url
from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import BatchIncomplete
from comfybatch.flows.batch import generate_batch
from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import get_settings
from comfybatch.testing.fleet import HarnessFleet, journal_path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The server then logs every SQLite "database is locked" it answers with a retryable 503.
_PREFECT_SERVER_DIAGNOSTICS = {"PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
_RETRYABLE_MARK = "Encountered retryable exception in request"
_API_FRAME = re.compile(r'prefect/server/api/(?!server\.py)(\w+)\.py", line \d+, in (\w+)')
DIRECT_LANES = 2  # the minimal direct feeder: one prompt running per server, one queued behind it
NONCE_INPUT = "2.inputs.nonce"
# ComfyUI's prompt worker runs gc.collect() after a prompt once this long has passed since the last one (main.py,
# gc_collect_interval): a pause of ~0.3 s per server, all servers together when they run in step.
COMFY_GC_INTERVAL_S = 10.0


@dataclass(frozen=True)
class PromptSpan:
    """One prompt as the client saw it (epoch seconds): queued = POST answered, started = first
    execution event, finished = `/history` read."""

    server: str
    queued_at: float
    started_at: float
    finished_at: float


@dataclass(frozen=True)
class NodeRun:
    """One execution of a test node, as the ComfyUI process itself journaled it."""

    server: str
    nonce: str
    start: float
    end: float


@dataclass
class Phase:
    """One measured run: wall clock around the call, the prompts it ran and the CPU it cost."""

    name: str
    called_at: float
    returned_at: float
    prompts: list[PromptSpan]
    cpu_s: dict[str, float] = field(default_factory=dict)
    nonce_prefix: str = ""
    error: str | None = None
    prefect_503s: Counter[str] = field(default_factory=Counter)
    first_contact_setup_s: float | None = None  # comfybatch: the set-up of the fleet's first batch (`first_contact`)
    running_at: float | None = None  # comfybatch: when its flow run entered Running

    @property
    def makespan_s(self) -> float:
        return self.returned_at - self.called_at

    @property
    def first_submit(self) -> float:
        return min((p.queued_at for p in self.prompts), default=self.called_at)

    @property
    def last_finish(self) -> float:
        return max((p.finished_at for p in self.prompts), default=self.returned_at)

    @property
    def span_s(self) -> float:
        """First submit to last finish: the flow's own working time, set-up and wrap-up excluded."""
        return self.last_finish - self.first_submit


@dataclass
class Bench:
    """A running fleet and Prefect server, with comfybatch's settings pointing at them."""

    root: Path
    fleet: LocalFleet
    prefect: LocalPrefectServer
    output_root: Path
    urls: list[str]  # what every client talks to: the servers themselves, or their delaying proxies

    @property
    def servers(self) -> list[LocalComfyServer]:
        return self.fleet.servers

    def url_of(self, server: LocalComfyServer) -> str:
        return self.urls[self.servers.index(server)]

    def comfybatch_name(self, server: LocalComfyServer) -> str:
        """The name comfybatch gives a server configured by URL (its manifest's `server` column)."""
        return name_from_url(self.url_of(server))

    def lanes(self) -> list[tuple[str, str]]:
        """(server name, label) per server, for the timeline."""
        return [(self.comfybatch_name(s), f"{s.name} :{s.port}") for s in self.servers]

    def cpu_groups(self) -> dict[str, list[int]]:
        """Process ids to account CPU to, by component (the servers with their descendants)."""
        groups: dict[str, list[int]] = {"prefect-server": [], "comfyui": []}
        if self.prefect.process is not None:
            groups["prefect-server"].append(self.prefect.process.pid)
        groups["comfyui"] = [s.process.pid for s in self.servers if s.process is not None]
        return groups

    def cpu_snapshot(self) -> dict[str, float]:
        """CPU seconds so far: this process alone (its children are the servers), then each server group."""
        snapshot = {"client": cpu_seconds(os.getpid(), descendants=False)}
        snapshot.update({name: sum(cpu_seconds(pid) for pid in pids) for name, pids in self.cpu_groups().items()})
        return snapshot

    def prefect_log_size(self) -> int:
        return self.prefect.log_path.stat().st_size if self.prefect.log_path.exists() else 0

    def prefect_503s(self, start: int, end: int) -> Counter[str]:
        """Retryable errors (503 to the client) the Prefect server logged between two log sizes, by endpoint."""
        with self.prefect.log_path.open("rb") as log:
            log.seek(start)
            text = log.read(max(0, end - start)).decode(errors="replace")
        found: Counter[str] = Counter()
        for block in text.split(_RETRYABLE_MARK)[1:]:
            frame = _API_FRAME.search(block)
            found[f"{frame.group(1)}.{frame.group(2)}" if frame else "unknown"] += 1
        return found

    def node_runs(self, nonce_prefix: str) -> list[NodeRun]:
        """Executions of nodes whose nonce starts with `nonce_prefix`, on every server."""
        runs: list[NodeRun] = []
        for server in self.servers:
            if not journal_path(server).exists():
                continue
            for line in journal_path(server).read_text().splitlines():
                entry = json.loads(line)
                nonce = str(entry.get("nonce", ""))
                if nonce.startswith(nonce_prefix) and entry.get("outcome") == "ok":
                    runs.append(NodeRun(self.comfybatch_name(server), nonce, entry["start"], entry["end"]))
        return runs


@contextlib.contextmanager
def bench_environment(
    servers: int, *, log: Iterable[str] | None = None, proxy_delay_s: float = 0.0, prefect_env: Mapping[str, str] = {}
) -> Iterator[Bench]:
    """Start `servers` ComfyUI processes (test nodes, no checkpoint) and a Prefect server in a temp dir.

    With `proxy_delay_s`, every client reaches each server through a `TcpProxy` (in its own process,
    so it costs the orchestrator no CPU) that delays traffic that long each way.
    Everything is stopped by pid and the folder removed on exit, also on Ctrl-C.
    """
    with tempfile.TemporaryDirectory(prefix="comfybatch-bench-") as tmp:
        root = Path(tmp)
        fleet = HarnessFleet(root / "comfy", count=servers, checkpoint=False)
        prefect = LocalPrefectServer(root / "prefect")
        proxy: subprocess.Popen[str] | None = None
        try:
            started = time.monotonic()
            for server in fleet.servers:  # spawn all first: start-up is mostly imports, overlap it
                server.start()
            with _environ({**_PREFECT_SERVER_DIAGNOSTICS, **prefect_env}):
                prefect.start()
            for server in fleet.servers:
                server.wait_ready()
            urls = [server.url for server in fleet.servers]
            if proxy_delay_s > 0:
                proxy, urls = start_proxies([server.port for server in fleet.servers], delay_s=proxy_delay_s)
            print(f"  fleet and Prefect server ready in {time.monotonic() - started:.1f} s", flush=True)
            bench = Bench(root=root, fleet=fleet, prefect=prefect, output_root=root / "out", urls=urls)
            env = {
                "COMFYUI_URLS": ",".join(urls),
                "COMFYBATCH_OUTPUT_ROOT": str(bench.output_root),
                "COMFYBATCH_CONFIG_FILE": str(root / "absent.toml"),
            }
            updates = {PREFECT_API_URL: prefect.api_url, PREFECT_HOME: str(root / "prefect-client")}
            with temporary_settings(updates=updates), _environ(env):
                get_settings.cache_clear()
                try:
                    yield bench
                finally:
                    flush_prefect()
                    get_settings.cache_clear()
        finally:
            if proxy is not None:
                stop_process(proxy)
            prefect.stop()
            fleet.stop()


async def wait_prefect_idle(bench: Bench, *, max_s: float = 180.0, busy_fraction: float = 0.1) -> float:
    """Wait until the Prefect server has worked off its backlog (task runs and events recorded after a
    batch): under `busy_fraction` of a core for a second. So the next phase does not share the CPU with it.
    Returns the seconds waited."""
    started = time.monotonic()
    pids = bench.cpu_groups()["prefect-server"]
    while time.monotonic() - started < max_s:
        before = sum(cpu_seconds(pid) for pid in pids)
        await asyncio.sleep(1.0)
        if sum(cpu_seconds(pid) for pid in pids) - before < busy_fraction:
            break
    return time.monotonic() - started


def start_proxies(ports: list[int], *, delay_s: float) -> tuple["subprocess.Popen[str]", list[str]]:
    """`bench/_proxy.py` in a child process: one delaying proxy per port; returns it and the proxy URLs."""
    command = [sys.executable, str(BENCH_DIR / "_proxy.py"), "--delay", str(delay_s), *map(str, ports)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    urls = [process.stdout.readline().strip() for _ in ports]
    if not all(url.startswith("http://") for url in urls):
        stop_process(process)
        raise RuntimeError(f"proxy process did not start: {urls}")
    return process, urls


def stop_process(process: "subprocess.Popen[Any]") -> None:
    """SIGTERM our own child, SIGKILL if it lingers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def flush_prefect(timeout_s: float = 10.0) -> None:
    """Send Prefect's queued logs and events while its server still runs (call outside any event loop)."""
    APILogWorker.drain_all(timeout=timeout_s)
    EventsWorker.drain_all(timeout=timeout_s)


@contextlib.contextmanager
def _environ(values: Mapping[str, str]) -> Iterator[None]:
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, old in saved.items():
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old


def cpu_seconds(pid: int, *, descendants: bool = True) -> float:
    """User + system CPU of `pid` (0 if gone); with `descendants`, also its reaped and live children's."""
    total = 0.0
    for proc in [pid, *(_descendants(pid) if descendants else [])]:
        fields = _stat_fields(proc)
        if fields is not None:  # utime, stime, cutime, cstime: fields 14-17 of /proc/<pid>/stat
            total += sum(int(value) for value in fields[11 : 15 if descendants else 13]) / _CLOCK_TICKS
    return total


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text.rpartition(")")[2].split()  # the command name may contain spaces; fields start at 3


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _stat_fields(int(entry.name))) is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], list(children.get(pid, []))
    while stack:
        child = stack.pop()
        found.append(child)
        stack.extend(children.get(child, []))
    return found


def idle_gaps(runs: list[NodeRun]) -> list[float]:
    """Per server, the time between one node execution's end and the next one's start."""
    gaps: list[float] = []
    by_server: dict[str, list[NodeRun]] = {}
    for run in runs:
        by_server.setdefault(run.server, []).append(run)
    for server_runs in by_server.values():
        server_runs.sort(key=lambda run: run.start)
        gaps += [max(0.0, b.start - a.end) for a, b in itertools.pairwise(server_runs)]
    return gaps


def delay_graph(seconds: float, *, nonce: str = "", prefix: str = "bench/delay") -> dict[str, Any]:
    """EmptyImage(16x16) -> ComfybatchDelay -> SaveImage, API format (titled, as some clients need)."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0},
              "_meta": {"title": "Empty Image"}},
        "2": {"class_type": "ComfybatchDelay", "inputs": {"image": ["1", 0], "seconds": seconds, "nonce": nonce},
              "_meta": {"title": "Delay"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix},
              "_meta": {"title": "Save Image"}},
    }  # fmt: skip


async def warm_up(bench: Bench) -> None:
    """One trivial prompt per server, so no phase pays ComfyUI's first-execution costs."""

    async def one(url: str) -> None:
        async with ComfyClient(url) as comfy:
            await comfy.run(ApiWorkflow(delay_graph(0.0, nonce=f"warmup-{uuid.uuid4().hex}", prefix="bench/warmup")))

    await asyncio.gather(*(one(url) for url in bench.urls))


async def gc_in_step(bench: Bench, *, last_prompt_at: float) -> None:
    """Start the next phase on the same garbage-collection schedule as every other: wait out ComfyUI's interval
    since the last prompt, then one warm-up prompt per server, after which each server collects. The phase then
    meets its servers' next collection COMFY_GC_INTERVAL_S in, as every phase does; without this a phase shorter
    than the interval was lucky or not by where it fell."""
    await asyncio.sleep(max(0.0, last_prompt_at + COMFY_GC_INTERVAL_S + 0.5 - time.time()))
    await warm_up(bench)
    await asyncio.sleep(1.0)  # the collection runs after the warm-up prompt has answered: let it end first


def first_contact(bench: Bench) -> float:
    """A first batch in its own process (`_first_batch.py`), so that the measured one runs on a fleet the Prefect
    server has seen before; returns that first batch's set-up (call -> first prompt queued)."""
    env = {**os.environ, "PREFECT_API_URL": bench.prefect.api_url, "PREFECT_HOME": str(bench.root / "prefect-client")}
    found = subprocess.run([sys.executable, str(BENCH_DIR / "_first_batch.py"), str(2 * len(bench.servers))],
                           env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    if found.returncode != 0:
        raise RuntimeError(f"the first batch failed: {found.stderr[-2000:]}")
    return float(json.loads(found.stdout.strip().splitlines()[-1])["first_contact_setup_s"])


async def direct_then_comfybatch(
    bench: Bench, *, delay_s: float, images: int, run_id: str, spy: Any | None = None
) -> tuple[Phase, Phase]:
    """A first batch so the fleet is known to Prefect, then direct feeding, then the same images through comfybatch
    (sampled by `spy`), each phase starting on the same ComfyUI garbage-collection schedule."""
    print("  a first batch in its own process, so the Prefect server knows the fleet ...", flush=True)
    first_setup_s = await asyncio.to_thread(first_contact, bench)
    print(f"  (its set-up, the fleet's first contact: {first_setup_s:.2f} s)", flush=True)
    await gc_in_step(bench, last_prompt_at=time.time())
    print(f"  direct feeding: {images} images ...", flush=True)
    direct = await feed_directly(bench, delay_s=delay_s, images=images, run_id=run_id)
    await gc_in_step(bench, last_prompt_at=direct.returned_at)
    print(f"  comfybatch generate_batch: {images} images ...", flush=True)
    if spy is not None:
        spy.start({"client": os.getpid(), "prefect-server": bench.cpu_groups()["prefect-server"][0]})
    try:
        flow, _ = await run_comfybatch(bench, delay_s=delay_s, images=images, run_id=run_id)
    finally:
        if spy is not None:
            spy.stop()
    flow.first_contact_setup_s = first_setup_s
    return direct, flow


def cpu_delta(bench: Bench, before: dict[str, float]) -> dict[str, float]:
    return {name: seconds - before.get(name, 0.0) for name, seconds in bench.cpu_snapshot().items()}


async def feed_directly(
    bench: Bench, *, delay_s: float, images: int, run_id: str, lanes: int = DIRECT_LANES,
    graph: Any = delay_graph,
) -> Phase:  # fmt: skip
    """The physical limit: `lanes` per server pull from one shared queue, `ComfyClient` only, no Prefect."""
    prefix = f"direct-{run_id}-"
    queue = deque(
        ApiWorkflow(graph(delay_s, nonce=f"{prefix}{index:05d}", prefix=f"bench/direct/{index:05d}"))
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
            comfy = ComfyClient(bench.url_of(server))
            stack.push_async_callback(comfy.aclose)
            clients.append((comfy, bench.comfybatch_name(server)))
        async with asyncio.TaskGroup() as group:
            for comfy, name in clients:
                for _ in range(lanes):
                    group.create_task(lane(comfy, name))
        # The limit ends with the last image in hand: closing the clients' sockets one after another (each waits
        # for its server's close frame) took up to 0.9 s on 8 busy servers, which is no feeding.
        returned_at = time.time()
    return Phase("direct", called_at, returned_at, spans, cpu_delta(bench, cpu_before), nonce_prefix=prefix)


async def run_comfybatch(
    bench: Bench, *, delay_s: float, images: int, run_id: str, graph: Any = delay_graph
) -> tuple[Phase, str]:
    """`generate_batch` on the same workload; prompt times come from the batch's manifest. Also the batch name."""
    prefix = f"cb-{run_id}-"
    spec = BatchSpec(
        name=f"bench-{run_id}", workflow=graph(delay_s), bindings={"nonce": NONCE_INPUT},
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
    cpu = cpu_delta(bench, cpu_before)
    manifest = read_manifest(OutputStore(str(bench.output_root)), spec.name)
    spans: list[PromptSpan] = []
    if manifest is not None:
        for row in manifest[manifest["status"] == "done"].itertuples():
            times = [row.queued_at, row.started_at, row.finished_at]
            spans.append(PromptSpan(str(row.server), *(t.timestamp() for t in times)))
    phase = Phase("comfybatch", called_at, returned_at, spans, cpu, nonce_prefix=prefix, error=error)
    phase.prefect_503s = bench.prefect_503s(log_before, bench.prefect_log_size())
    phase.running_at = await running_at(spec.name)
    return phase, spec.name


async def running_at(run_name: str) -> float | None:
    """When the flow run named `run_name` entered Running, by the Prefect server's clock (this machine's)."""
    async with get_client() as client:
        runs = await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[run_name])))
        if not runs:
            return None
        states = await client.read_flow_run_states(runs[0].id)
    return min((state.timestamp.timestamp() for state in states if state.type == StateType.RUNNING), default=None)


def busy_fraction(runs: list[NodeRun], servers: int, span_s: float) -> float | None:
    return sum(run.end - run.start for run in runs) / (servers * span_s) if runs and span_s > 0 else None


def gap_ms(runs: list[NodeRun], stat: Any) -> float | None:
    gaps = idle_gaps(runs)
    return 1000 * stat(gaps) if gaps else None


def p95(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
