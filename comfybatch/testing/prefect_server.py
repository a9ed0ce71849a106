"""A real local Prefect server (`prefect server start`) with its own home, for tests and the demo."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from comfybatch.testing.fleet import ServerStartError, _die_with_parent, free_port

# Leases must survive a server restart, or slots held at that moment never come back (prefect-notes §1).
SERVER_ENV = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect.server.concurrency.lease_storage.filesystem",
    "PREFECT_SERVER_CONCURRENCY_MAXIMUM_CONCURRENCY_SLOT_WAIT_SECONDS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


@dataclass
class LocalPrefectServer:
    """One `prefect server start` process on loopback, SQLite under `home`."""

    home: Path
    port: int = field(default_factory=free_port)
    ui: bool = False
    die_with_parent: bool = True
    process: subprocess.Popen[bytes] | None = None

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
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **SERVER_ENV, "PREFECT_HOME": str(self.home), "PREFECT_UI_ENABLED": str(self.ui).lower(),
               "PREFECT_API_URL": self.api_url}  # fmt: skip
        command = [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1",
                   "--port", str(self.port)]  # fmt: skip
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.home,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
                start_new_session=not self.die_with_parent,
            )  # fmt: skip
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(f"Prefect server exited during start-up\n{self._tail()}")
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise ServerStartError(f"Prefect server not healthy after {timeout_s:g} s\n{self._tail()}")

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

    def _tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
