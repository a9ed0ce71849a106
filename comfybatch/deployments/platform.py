"""`comfybatch up | stop | status | logs`: the whole platform on one machine, from one command.

Everything lives under a project-local home (`.comfybatch/`, or `COMFYBATCH_HOME`): the Prefect
server's SQLite database, logs, and `state.json` with the pid of every process `up` started.
`stop` signals exactly those pids, after checking each still runs what we started.
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import httpx

from comfybatch.errors import ConfigError

DEFAULT_PREFECT_PORT = 4200
_EXEC_GRACE_S = 5.0
Startup = Literal["ready", "exited", "timed out"]  # how a wait for a starting server's HTTP ended


def _serves(status: int) -> bool:  # any answer but a server error: the process is serving
    return status < 500


@dataclass
class Component:
    """A process `up` started."""

    pid: int
    marker: str  # a string its command line contains: never signal a pid that was reused
    url: str = ""
    log: str = ""


@dataclass
class PlatformState:
    components: dict[str, Component] = field(default_factory=dict)
    prefect_api_url: str = ""
    comfyui_urls: list[str] = field(default_factory=list)
    demo: bool = False


def home() -> Path:
    return Path(os.environ.get("COMFYBATCH_HOME", ".comfybatch")).resolve()


def load_state() -> PlatformState:
    path = home() / "state.json"
    if not path.is_file():
        return PlatformState()
    raw = json.loads(path.read_text())
    components = {name: Component(**value) for name, value in raw.pop("components", {}).items()}
    return PlatformState(components=components, **raw)


def save_state(state: PlatformState) -> None:
    home().mkdir(parents=True, exist_ok=True)
    (home() / "state.json").write_text(json.dumps(asdict(state), indent=2))


def is_alive(component: Component) -> bool:
    """The pid runs and its command line still contains our marker."""
    try:
        cmdline = Path(f"/proc/{component.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return component.marker in cmdline


def stop_component(component: Component, *, timeout_s: float = 15.0) -> bool:
    """SIGTERM, then SIGKILL after `timeout_s`; True if it was running."""
    if not is_alive(component):
        return False
    os.kill(component.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and is_alive(component):
        time.sleep(0.1)
    if is_alive(component):
        os.kill(component.pid, signal.SIGKILL)
    return True


def port_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def fleet_env(state: PlatformState) -> dict[str, str]:
    """How `up` hands its fleet to serve and the dashboard: the demo under its own name, so its blocks say `demo`."""
    if not state.comfyui_urls:
        return {}
    return {"COMFYBATCH_DEMO_URLS" if state.demo else "COMFYUI_URLS": ",".join(state.comfyui_urls)}


def start_serve(state: PlatformState) -> Component:
    """`comfybatch serve` in the background, pointed at this platform's Prefect server and fleet."""
    log = home() / "logs" / "serve.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": state.prefect_api_url, **fleet_env(state)}
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "comfybatch.cli", "serve"], env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Component(pid=process.pid, marker="comfybatch.cli serve", log=str(log))


def local_api_key() -> str:
    """This platform's own dashboard key (`.comfybatch/api-key`, made once, readable by this user only)."""
    path = home() / "api-key"
    if not path.is_file():
        home().mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()


def start_dashboard(state: PlatformState, *, port: int, api_key: str | None) -> Component:
    """The dashboard (`python -m comfybatch.dashboard`) in the background, on this platform's Prefect and fleet.

    With `api_key`, that is its only key (named `local`); otherwise the operator's settings decide.
    """
    log = home() / "logs" / "dashboard.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PREFECT_API_URL": state.prefect_api_url, "COMFYBATCH_DASHBOARD_PORT": str(port),
           **fleet_env(state)}  # fmt: skip
    if api_key is not None:
        env["COMFYBATCH_API_KEYS"] = f"local:{api_key}"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "comfybatch.dashboard"], env=env, stdout=sink, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return Component(pid=process.pid, marker="comfybatch.dashboard", url=f"http://127.0.0.1:{port}", log=str(log))


def wait_for_http(url: str, *, component: Component, what: str, timeout_s: float = 60.0) -> None:
    """Block until `url` answers (any status below 500).

    Raises:
        ConfigError with the component's log tail when it exits or never answers.
    """
    started = time.monotonic()
    if poll_http(url, alive=lambda: _starting_or_alive(component, started), timeout_s=timeout_s) != "ready":
        raise ConfigError(f"{what} did not start; last lines of {component.log}:\n{log_tail(Path(component.log))}")


def poll_http(url: str, *, alive: Callable[[], bool], timeout_s: float, ready: Callable[[int], bool] = _serves,
              interval_s: float = 0.3, request_timeout_s: float = 5.0) -> Startup:  # fmt: skip
    """Poll `url` until its status is `ready`, while the process behind it is `alive`: the one start-up wait of
    `up` and of the test harness (which waits for 200 from its ComfyUI and Prefect servers)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive():
            return "exited"
        try:
            if ready(httpx.get(url, timeout=request_timeout_s).status_code):
                return "ready"
        except httpx.TransportError:
            pass
        time.sleep(interval_s)
    return "timed out"


def wait_for_deployment(api_url: str, name: str, *, timeout_s: float = 90.0, serve: Component | None = None) -> None:
    """Block until the Prefect server knows deployment `flow/deployment`.

    Raises:
        ConfigError with the serve log tail when it never appears.
    """
    started = time.monotonic()
    outcome = poll_http(f"{api_url}/deployments/name/{name}", timeout_s=timeout_s, ready=lambda status: status == 200,
                        alive=lambda: serve is None or _starting_or_alive(serve, started), interval_s=0.5)  # fmt: skip
    if outcome == "ready":
        return
    tail = log_tail(Path(serve.log)) if serve is not None else ""
    raise ConfigError(f"the deployments did not come up (no {name} after {timeout_s:g} s)\n{tail}")


def _starting_or_alive(component: Component, since: float) -> bool:
    # Between fork and exec a child's command line is still ours, without the marker: allow it a moment.
    return is_alive(component) or time.monotonic() - since < _EXEC_GRACE_S


def log_tail(log: Path, lines: int = 40) -> str:
    """The last `lines` of a process's log, for an error that says why it did not start."""
    if not log.is_file():
        return "(no log)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def server_health(url: str) -> str:
    """`ok, queue N` or why not, for one ComfyUI server."""
    try:
        stats = httpx.get(f"{url}/system_stats", timeout=3)
        queue = httpx.get(f"{url}/queue", timeout=3).json()
    except (httpx.HTTPError, ValueError) as exc:
        return f"unreachable ({type(exc).__name__})"
    if stats.status_code != 200:
        return f"answers {stats.status_code}"
    depth = len(queue.get("queue_running", [])) + len(queue.get("queue_pending", []))
    return f"ok, {depth} prompt(s) in its queue"
