"""The multi-machine setup of `deploy/` as local processes: the `comfybatch` process work pool with its
deployments registered from `prefect.yaml` and its automations, and
`prefect worker start` processes, each killable the way a machine dies (the worker and its flow runs at once).
The automations come from `deploy/crash-zombies.yaml` and `deploy/rerun-crashed.yaml`."""

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from comfybatch.deployments.platform import log_tail
from comfybatch.deployments.workpool import POOL
from comfybatch.local.fleet import die_with_parent

REPO = Path(__file__).resolve().parents[2]
AUTOMATIONS = (REPO / "deploy" / "crash-zombies.yaml", REPO / "deploy" / "rerun-crashed.yaml")
WORKER_ENV = {
    # Flow runs send heartbeats (none by default; 30 s is Prefect's minimum) for the zombie automation.
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30",
    "PREFECT_WORKER_QUERY_SECONDS": "1",  # default 10: a shard waits up to that before a worker takes it
}


def _prefect() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def register(env: dict[str, str], *, folder: Path, deployments: tuple[str, ...] = ("generate-batch", "render-shard"),
             zombies: bool = True) -> None:  # fmt: skip
    """What `deploy/`'s `register` service runs: the work pool, the deployments of `prefect.yaml` (module
    entrypoints: nothing is pulled), and the automations that crash zombie runs and run crashed batches again.
    `folder` gets a copy of `prefect.yaml`.

    Raises:
        subprocess.CalledProcessError with the command's output.
    """
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "prefect.yaml", folder / "prefect.yaml")
    names = [arg for name in deployments for arg in ("--name", name)]
    commands = [[_prefect(), "work-pool", "create", POOL, "--type", "process", "--overwrite"],
                [_prefect(), "--no-prompt", "deploy", *names]]  # fmt: skip
    if zombies:
        commands += [[_prefect(), "automation", "create", "--from-file", str(path)] for path in AUTOMATIONS]
    for command in commands:
        subprocess.run(command, env=env, cwd=folder, check=True, capture_output=True, timeout=180)


@dataclass
class LocalWorker:
    """One `prefect worker start --pool comfybatch --type process` (one machine's worker)."""

    name: str
    home: Path
    env: dict[str, str]
    limit: int = 3
    process: subprocess.Popen[bytes] | None = None
    started_at: float = field(default=0.0)

    @property
    def log_path(self) -> Path:
        return self.home / "worker.log"

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, **WORKER_ENV, "PREFECT_HOME": str(self.home / "prefect")}
        command = [_prefect(), "worker", "start", "--pool", POOL, "--type", "process", "--name", self.name,
                   "--limit", str(self.limit)]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, env=env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)  # fmt: skip
        self.started_at = time.monotonic()

    def flow_run_pids(self) -> list[int]:
        """The pids of every process under the worker (its flow runs and theirs)."""
        if self.process is None:
            return []
        children = child_map()
        found, todo = [], list(children.get(self.process.pid, []))
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo += children.get(pid, [])
        return found

    def kill_machine(self) -> list[int]:
        """SIGKILL the worker and everything under it at once, as when its machine dies; returns the pids killed."""
        if self.process is None:
            return []
        victims = [self.process.pid, *self.flow_run_pids()]
        for pid in victims:
            try:
                os.kill(pid, signal.SIGSTOP)  # freeze first: nobody gets to notice and clean up
            except ProcessLookupError:
                continue
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue
        self.process.wait(10)
        return victims

    def stop(self) -> None:
        """SIGTERM (the worker stops its flow runs), then SIGKILL; then any flow run it left."""
        if self.process is None:
            return
        leftovers = self.flow_run_pids()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                continue

    def tail(self, lines: int = 40) -> str:
        return f"--- worker {self.name} ---\n{log_tail(self.log_path, lines)}"


def child_map() -> dict[int, list[int]]:
    """Every process's children, by parent pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    return children
