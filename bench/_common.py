"""Shared benchmark harness: a local ComfyUI fleet plus a Prefect server, configured for comfybatch.

Also the measurements every bench needs: prompt spans, CPU time per process group (from `/proc`),
and the test nodes' execution journal (the server-side truth of when each node ran).
"""

import contextlib
import itertools
import json
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from comfybatch.blocks.server import name_from_url
from comfybatch.settings import get_settings
from comfybatch.testing.fleet import LocalComfyServer, LocalFleet
from comfybatch.testing.prefect_server import LocalPrefectServer

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# The server then logs every SQLite "database is locked" it answers with a retryable 503.
_PREFECT_SERVER_DIAGNOSTICS = {"PREFECT_API_LOG_RETRYABLE_ERRORS": "true"}
_RETRYABLE_MARK = "Encountered retryable exception in request"
_API_FRAME = re.compile(r'prefect/server/api/(?!server\.py)(\w+)\.py", line \d+, in (\w+)')


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

    @property
    def servers(self) -> list[LocalComfyServer]:
        return self.fleet.servers

    def comfybatch_name(self, server: LocalComfyServer) -> str:
        """The name comfybatch gives a server configured by URL (its manifest's `server` column)."""
        return name_from_url(server.url)

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
            if not server.journal_path.exists():
                continue
            for line in server.journal_path.read_text().splitlines():
                entry = json.loads(line)
                nonce = str(entry.get("nonce", ""))
                if nonce.startswith(nonce_prefix) and entry.get("outcome") == "ok":
                    runs.append(NodeRun(self.comfybatch_name(server), nonce, entry["start"], entry["end"]))
        return runs


@contextlib.contextmanager
def bench_environment(servers: int, *, log: Iterable[str] | None = None) -> Iterator[Bench]:
    """Start `servers` ComfyUI processes (test nodes, no checkpoint) and a Prefect server in a temp dir.

    Everything is stopped by pid and the folder removed on exit, also on Ctrl-C.
    """
    with tempfile.TemporaryDirectory(prefix="comfybatch-bench-") as tmp:
        root = Path(tmp)
        fleet = LocalFleet(root / "comfy", count=servers, checkpoint=False)
        prefect = LocalPrefectServer(root / "prefect")
        try:
            started = time.monotonic()
            for server in fleet.servers:  # spawn all first: start-up is mostly imports, overlap it
                server.start()
            with _environ(_PREFECT_SERVER_DIAGNOSTICS):
                prefect.start()
            for server in fleet.servers:
                server.wait_ready()
            print(f"  fleet and Prefect server ready in {time.monotonic() - started:.1f} s", flush=True)
            bench = Bench(root=root, fleet=fleet, prefect=prefect, output_root=root / "out")
            env = {
                "COMFYUI_URLS": ",".join(server.url for server in fleet.servers),
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
            prefect.stop()
            fleet.stop()


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
