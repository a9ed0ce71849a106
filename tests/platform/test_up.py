"""`comfybatch up | status | stop`: the whole platform from one command, and only its own processes stopped."""

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfybatch.deployments.platform import Component, is_alive, stop_component
from comfybatch.local.fleet import free_port
from tests.platform.conftest import clean_env, running

pytestmark = pytest.mark.timeout(180)


@dataclass(frozen=True)
class Platform:
    """Where `up` ran, with which environment, and its COMFYBATCH_HOME."""

    cwd: Path
    env: dict[str, str]
    home: Path
    up_output: str

    def read_state(self) -> dict[str, Any]:
        """state.json as `up`, `restart` or `stop` last wrote it."""
        state: dict[str, Any] = json.loads((self.home / "state.json").read_text())
        return state

    def comfybatch(self, *args: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess[str]:
        return _comfybatch(*args, cwd=self.cwd, env=self.env, timeout_s=timeout_s)


def _comfybatch(*args: str, cwd: Path, env: dict[str, str], timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "comfybatch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s, check=False)  # fmt: skip


def _platform_env(root: Path) -> dict[str, str]:
    """No fleet configured: no COMFYUI_URLS and no fleet file; everything `up` keeps lives under `root/home`."""
    return clean_env(COMFYBATCH_HOME=str(root / "home"), COMFYBATCH_CONFIG_FILE="/dev/null",
                     PREFECT_HOME=str(root / "prefect-client"), COMFYBATCH_DASHBOARD_PORT=str(free_port()))  # fmt: skip


def _components(home: Path) -> dict[str, Component]:
    path = home / "state.json"
    raw = json.loads(path.read_text()) if path.is_file() else {}
    return {name: Component(**value) for name, value in raw.get("components", {}).items()}


@pytest.fixture(scope="module")
def platform_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """`comfybatch up --demo --demo-servers 1` in a fresh folder; whatever it started is stopped afterwards."""
    root = tmp_path_factory.mktemp("platform-up")
    env = _platform_env(root)
    home = root / "home"
    try:
        up = _comfybatch("up", "--demo", "--demo-servers", "1", "--port", str(free_port()), cwd=root, env=env,
                         timeout_s=120)  # fmt: skip
        assert up.returncode == 0, f"up exited {up.returncode}\n{up.stdout}\n{up.stderr}"
        yield Platform(root, env, home, up.stdout)
    finally:
        for component in _components(home).values():  # by pid, only if it still runs what up started
            if is_alive(component):
                stop_component(component, timeout_s=10)


def test_status_lists_every_component_running_and_a_healthy_server(platform_up: Platform) -> None:
    """After `up --demo`, status exits 0 and shows prefect, serve and the demo server running, its queue healthy."""
    status = platform_up.comfybatch("status")

    assert status.returncode == 0, status.stdout + status.stderr
    lines = status.stdout.splitlines()
    assert {line.split()[0] for line in lines if " running " in line} == {
        "prefect", "serve", "dashboard", "comfyui:local-0"
    }  # fmt: skip
    (url,) = platform_up.read_state()["comfyui_urls"]
    assert any(line.startswith("comfyui ") and url in line and "ok, 0 prompt(s) in its queue" in line
               for line in lines), status.stdout  # fmt: skip


def test_dashboard_link_carries_the_platforms_own_key(platform_up: Platform) -> None:
    """`up` prints the dashboard URL with its generated key in the fragment; the API accepts that key only."""
    link = next(line.split()[-1] for line in platform_up.up_output.splitlines() if "dashboard:" in line)
    base, _, fragment = link.partition("/#key=")

    with_key = httpx.get(f"{base}/api/workflows", headers={"Authorization": f"Bearer {fragment}"}, timeout=10)
    without = httpx.get(f"{base}/api/workflows", timeout=10)
    page = httpx.get(f"{base}/", timeout=10)

    assert (with_key.status_code, without.status_code, page.status_code) == (200, 401, 200)
    assert "txt2img-tiny" in with_key.json()["workflows"]
    assert oct((platform_up.home / "api-key").stat().st_mode & 0o777) == "0o600"


def test_restart_comes_back_on_the_same_port_with_the_same_demo_fleet(platform_up: Platform) -> None:
    """`restart` without options replaces every process, on the port and with the demo server count `up` was given."""
    before = platform_up.read_state()

    restart = platform_up.comfybatch("restart", timeout_s=120)

    after = platform_up.read_state()
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert after["prefect_api_url"] == before["prefect_api_url"]
    assert sorted(after["components"]) == sorted(before["components"]) == [
        "comfyui:local-0", "dashboard", "prefect", "serve"
    ]  # fmt: skip
    assert [part["pid"] for part in before["components"].values() if running(part["pid"])] == []
    assert all(running(part["pid"]) for part in after["components"].values())


def test_stop_ends_every_process_up_started(platform_up: Platform) -> None:
    """`stop` ends every pid recorded in state.json, and status then exits non-zero."""
    pids = [part["pid"] for part in platform_up.read_state()["components"].values()]

    stop = platform_up.comfybatch("stop", timeout_s=60)
    status = platform_up.comfybatch("status")

    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert len(pids) == 4
    assert [pid for pid in pids if running(pid)] == []
    assert status.returncode != 0, status.stdout


def test_up_on_a_taken_port_fails_fast_naming_it(tmp_path: Path) -> None:
    """`up` on a port another program listens on exits 2 within seconds, naming the port, and starts nothing."""
    env = _platform_env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()

        up = _comfybatch("up", "--demo", "--demo-servers", "1", "--port", str(port), cwd=tmp_path, env=env,
                         timeout_s=30)  # fmt: skip

    assert up.returncode == 2, up.stdout + up.stderr
    assert f"port {port}" in up.stderr
    assert time.monotonic() - started < 15
    assert _components(tmp_path / "home") == {}
