"""The platform as it runs for real: `prefect server start` with its services, `comfybatch serve` as a subprocess.

The session harness runs no scheduler (prefect-notes §9), so each module here starts its own Prefect
server whose scheduler looks every second, and its own `python -m comfybatch.cli serve`.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from comfybatch.deployments.platform import log_tail
from comfybatch.local.fleet import die_with_parent
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.testing.cluster import child_map
from tests.conftest import SuiteFleet

T = TypeVar("T")

# prefect/settings/models/server/services.py: the scheduler visits deployments every second and picks up
# new ones within a second; late runs are looked for every second.
SCHEDULER_ENV = {
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "1",
    "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "20",
    "PREFECT_SERVER_SERVICES_LATE_RUNS_LOOP_SECONDS": "1",
}
# Settings a developer's shell may carry that would point the platform elsewhere.
_FOREIGN = ("COMFYUI_URLS", "COMFYBATCH_", "PREFECT_")
# What the cached ComfyUI install and the demo fleet still need from the shell.
_KEEP = ("COMFYBATCH_CACHE_DIR", "COMFYBATCH_TEST_COMFYUI_DIR", "COMFYBATCH_TEST_COMFYUI_PYTHON")
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def clean_env(**updates: str) -> dict[str, str]:
    """This process's environment without fleet, comfybatch or Prefect settings, plus `updates`."""
    env = {key: value for key, value in os.environ.items() if key in _KEEP or not key.startswith(_FOREIGN)}
    return {**env, **updates}


def wait_until(check: Callable[[], T | None], *, timeout_s: float, what: str,
               context: Callable[[], str] = lambda: "", interval_s: float = 0.5) -> T:  # fmt: skip
    """Poll `check` until it returns something truthy; fail naming `what` and `context()` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        if result := check():
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s:g} s\n{context()}", pytrace=False)
        time.sleep(interval_s)


def _process_start(pid: int) -> str | None:
    """The start time field of /proc/<pid>/stat (tells a reused pid apart), None when gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return _process_start(pid) is not None


def children(pid: int) -> list[int]:
    """The direct children of `pid`."""
    return child_map().get(pid, [])


def _descendants(pid: int) -> list[tuple[int, str]]:
    """(pid, start time) of every live descendant of `pid`."""
    children = child_map()
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        if (started := _process_start(child)) is not None:
            found.append((child, started))
        todo += children.get(child, [])
    return found


@dataclass
class ServeProcess:
    """`python -m comfybatch.cli serve`, started by this test run."""

    process: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, env: dict[str, str], *, cwd: Path, args: tuple[str, ...] = ()) -> "ServeProcess":
        log = cwd / "serve.log"
        with log.open("ab") as sink:
            process = subprocess.Popen(
                [sys.executable, "-m", "comfybatch.cli", "serve", *args], env=env, cwd=cwd, stdout=sink,
                stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip
        return cls(process, log)

    def tail(self) -> str:
        return f"--- serve log ---\n{log_tail(self.log, 60)}"

    def wait_for_deployments(self, api_url: str, *names: str, timeout_s: float = 90.0) -> None:
        """Block until the Prefect server knows every deployment in `names` (fail early if serve exits)."""

        def known() -> bool:
            if self.process.poll() is not None:
                pytest.fail(f"comfybatch serve exited with {self.process.returncode}\n{self.tail()}", pytrace=False)
            try:
                return all(httpx.get(f"{api_url}/deployments/name/{name}", timeout=5).status_code == 200
                           for name in names)  # fmt: skip
            except httpx.TransportError:
                return False

        wait_until(known, timeout_s=timeout_s, what=f"deployments {', '.join(names)}", context=self.tail)

    def stop(self, *, timeout_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL; then the same for any flow-run process it left behind (by pid)."""
        leftovers = _descendants(self.process.pid)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # the runner finishes the runs it has in flight
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                leftovers += _descendants(self.process.pid)  # after the kill they no longer have it as parent
                self.process.kill()
                self.process.wait(10)
        for pid, started in leftovers:
            for sig, grace_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
                if _process_start(pid) != started:
                    break
                os.kill(pid, sig)
                deadline = time.monotonic() + grace_s
                while time.monotonic() < deadline and _process_start(pid) == started:
                    time.sleep(0.1)


@contextlib.contextmanager
def serving(
    api_url: str, env: dict[str, str], root: Path, *deployments: str, args: tuple[str, ...] = ()
) -> Iterator[ServeProcess]:
    """`comfybatch serve [args]` in `root` until the block exits, once the server knows `deployments`."""
    serve = ServeProcess.start(env, cwd=root, args=args)
    try:
        serve.wait_for_deployments(api_url, *deployments)
        yield serve
    finally:
        serve.stop()


def serve_env(api_url: str, fleet: SuiteFleet, root: Path, **settings: str) -> dict[str, str]:
    """The serve process's environment: this Prefect server, the suite's fleet, outputs and inbox under `root`."""
    return clean_env(
        PREFECT_API_URL=api_url, PREFECT_HOME=str(root / "prefect-client"), PREFECT_RUNNER_POLL_FREQUENCY="1",
        COMFYUI_URLS=",".join(server.url for server in fleet.servers), COMFYBATCH_CONFIG_FILE=os.devnull,
        COMFYBATCH_OUTPUT_ROOT=str(root / "out"), COMFYBATCH_INBOX=str(root / "inbox"),
        COMFYBATCH_RETRY_BACKOFF_S="0.2", **settings,
    )  # fmt: skip


@pytest.fixture(scope="module")
def platform_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """`prefect server start` with every service and a scheduler that looks every second; one per module."""
    server = LocalPrefectServer(tmp_path_factory.mktemp("platform-prefect"))
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SCHEDULER_ENV.items():
            patch.setenv(name, value)
        server.start()
    try:
        yield server
    finally:
        server.stop()


def api_call(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One Prefect API request, retried on 503 as Prefect's own client does (SQLite busy: nothing was written)."""
    for attempt in range(6):
        response = httpx.request(method, url, timeout=10, **kwargs)
        if response.status_code != 503:
            break
        time.sleep(0.25 * 2**attempt)
    return response


def api_json(response: httpx.Response) -> Any:
    """The body of a successful API answer (failing with the body otherwise)."""
    assert response.is_success, (
        f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
    )
    return response.json()


def read_report(path: Path) -> dict[str, Any] | None:
    """A `<sheet>.report.json` once it is completely written."""
    try:
        report: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return report
