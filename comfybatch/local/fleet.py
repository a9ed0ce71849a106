"""Start and stop real local ComfyUI servers (CPU): the demo fleet, and the servers tests and benchmarks run.

Each server gets its own `--base-directory` (models, custom_nodes, input, output, user), so runs
never write into the cached ComfyUI tree. Custom node packages (the test harness's fault nodes) are the
caller's: `LocalFleet(custom_nodes=..., required_nodes=...)`. Processes are stopped by the pid we started, and die
with the process that started them (PR_SET_PDEATHSIG), even if it is killed.
"""

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import httpx

from comfybatch.deployments.platform import log_tail, poll_http
from comfybatch.local.checkpoint import ensure_tiny_checkpoint
from comfybatch.local.install import ComfyInstall, ensure_comfyui

_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class ServerStartError(RuntimeError):
    """A local server did not become ready; the message carries its log tail."""


def wait_for_http(url: str, process: subprocess.Popen[bytes], *, what: str, timeout_s: float, log: Path) -> None:
    """Poll `url` until it answers 200, failing early if `process` exits.

    Raises:
        ServerStartError with the tail of `log`.
    """
    outcome = poll_http(url, alive=lambda: process.poll() is None, timeout_s=timeout_s,
                        ready=lambda status: status == 200, interval_s=0.15, request_timeout_s=2.0)  # fmt: skip
    if outcome == "exited":
        raise ServerStartError(f"{what} exited during start-up\n{log_tail(log)}")
    if outcome == "timed out":
        raise ServerStartError(f"{what} not ready after {timeout_s:g} s\n{log_tail(log)}")


@dataclass
class LocalComfyServer:
    """One ComfyUI process we started."""

    name: str
    base_dir: Path
    install: ComfyInstall
    port: int = field(default_factory=free_port)
    env: dict[str, str] = field(default_factory=dict)
    die_with_parent: bool = True  # False for the platform's demo fleet, which outlives `comfybatch up`
    required_nodes: tuple[str, ...] = ()  # node classes that must load, or the start failed
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def log_path(self) -> Path:
        return self.base_dir / "server.log"

    def start(self) -> None:
        """Spawn the process (use `wait_ready` before talking to it)."""
        for sub in ("models/checkpoints", "custom_nodes", "input", "output", "user"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", **self.env}
        command = [
            str(self.install.python), str(self.install.main_py), "--cpu", "--listen", "127.0.0.1",
            "--port", str(self.port), "--disable-auto-launch", "--base-directory", str(self.base_dir),
            "--database-url", "sqlite:///:memory:", "--disable-api-nodes", "--dont-print-server",
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command,
            cwd=self.base_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent if self.die_with_parent else None,
            start_new_session=not self.die_with_parent,
        )
        log.close()

    def wait_ready(self, *, timeout_s: float = 120.0) -> None:
        """Block until `GET /system_stats` answers 200 and the required node classes are loaded.

        Raises:
            ServerStartError with the server's log tail.
        """
        if self.process is None:
            raise ServerStartError(f"ComfyUI {self.name} was never started")
        wait_for_http(f"{self.url}/system_stats", self.process, what=f"ComfyUI {self.name}", timeout_s=timeout_s,
                      log=self.log_path)  # fmt: skip
        self._check_required_nodes()

    def _check_required_nodes(self) -> None:
        for node_class in self.required_nodes:
            if not httpx.get(f"{self.url}/object_info/{node_class}", timeout=10.0).json():
                raise ServerStartError(f"node class {node_class} failed to load on {self.name}\n{self.log_tail()}")

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after `timeout_s`; only our own pid."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: the server dies the way a crashed GPU box does (queue and history lost)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def restart(self, *, timeout_s: float = 120.0) -> None:
        """Stop if running, then start again on the same port with the same folders."""
        self.stop()
        self.start()
        self.wait_ready(timeout_s=timeout_s)

    def log_tail(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)


class LocalFleet:
    """N local servers with the tiny checkpoint (and any `custom_nodes`), started in parallel.

    Example:
        with LocalFleet(Path(tempfile.mkdtemp()), count=2) as fleet:
            urls = [server.url for server in fleet.servers]
    """

    def __init__(
        self, root: Path, *, count: int = 2, checkpoint: bool = True, names: Sequence[str] | None = None,
        install: ComfyInstall | None = None, die_with_parent: bool = True, custom_nodes: Sequence[Path] = (),
        required_nodes: Sequence[str] = (),
    ) -> None:  # fmt: skip
        self.root = root
        self.die_with_parent = die_with_parent
        self.install = install or ensure_comfyui()
        self.custom_nodes = tuple(custom_nodes)  # node package folders linked into each server's custom_nodes
        self.required_nodes = tuple(required_nodes)
        self.checkpoint = ensure_tiny_checkpoint(self.install) if checkpoint else None
        names = list(names or [f"local-{index}" for index in range(count)])
        self.servers = [self.add_server(name, start=False) for name in names]

    def add_server(self, name: str, *, start: bool = True) -> LocalComfyServer:
        """A further server laid out like the others (started and ready when `start`)."""
        server = self.new_server(name)
        for package in self.custom_nodes:
            _link(package, server.base_dir / "custom_nodes")
        _link(self.checkpoint, server.base_dir / "models" / "checkpoints")
        if start:
            server.start()
            server.wait_ready()
        return server

    def new_server(self, name: str) -> LocalComfyServer:
        """The server object for `name`, not yet started (a subclass may add to its environment)."""
        return LocalComfyServer(name=name, base_dir=self.root / name, install=self.install,
                                die_with_parent=self.die_with_parent, required_nodes=self.required_nodes)  # fmt: skip

    def __enter__(self) -> Self:
        self.start()
        return self

    def start(self) -> None:
        """Start every server in parallel and wait until all are ready (stopping them all on failure)."""
        try:
            for server in self.servers:
                server.start()
            for server in self.servers:
                server.wait_ready()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _link(source: Path | None, folder: Path) -> None:
    if source is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if target.is_symlink() or target.exists():
        return
    try:
        target.symlink_to(source, target_is_directory=source.is_dir())
    except OSError:  # filesystems without symlinks
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, target)


def die_with_parent() -> None:
    # Runs in the child: if the process that started it (a test run, the demo) is killed, its servers go with it
    # (Linux only). The signal follows the *thread* that spawned the child: spawn from the main thread, never from
    # a worker thread (asyncio.to_thread) that may end while the server should live on.
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
