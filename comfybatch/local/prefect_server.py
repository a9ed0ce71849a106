"""A real local Prefect server (`prefect server start`) with its own home, for tests and the demo."""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from comfybatch.local.fleet import ServerStartError, die_with_parent, free_port, wait_for_http

# Leases must survive a server restart, or slots held at that moment never come back (prefect-notes §1).
SERVER_ENV = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@dataclass
class LocalPrefectServer:
    """One `prefect server start` process on loopback, SQLite under `home` unless `database_url` is set."""

    home: Path
    port: int = field(default_factory=free_port)
    ui: bool = False
    die_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = None
    database_url: str | None = None  # e.g. LocalPostgres.url: postgresql+asyncpg://user:pw@127.0.0.1:port/prefect

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def log_path(self) -> Path:
        return self.home / "prefect-server.log"

    def start(self, *, timeout_s: float = 90.0) -> None:
        """Start and wait for `/api/health`.

        Raises:
            ServerStartError with the log tail.
        """
        self.spawn()
        self.wait_ready(timeout_s=timeout_s)

    def spawn(self) -> None:
        """Start the process without waiting (from a thread that outlives it: see `die_with_parent`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **SERVER_ENV, "PREFECT_HOME": str(self.home), "PREFECT_UI_ENABLED": str(self.ui).lower(),
               "PREFECT_API_URL": self.api_url}  # fmt: skip
        if self.database_url is not None:
            env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = self.database_url
        command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                preexec_fn=die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )  # fmt: skip

    def wait_ready(self, *, timeout_s: float = 90.0) -> None:
        """Block until `/api/health` answers (stopping the process on failure).

        Raises:
            ServerStartError with the log tail.
        """
        if self.process is None:
            raise ServerStartError("the Prefect server was never started")
        try:
            wait_for_http(f"{self.api_url}/health", self.process, what="Prefect server", timeout_s=timeout_s,
                          log=self.log_path)  # fmt: skip
        except ServerStartError:
            self.stop()
            raise

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; only the process we started."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
