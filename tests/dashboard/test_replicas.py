"""Issue 12 §2: two `comfybatch dashboard` processes on one Prefect server serve one batch's events under the same
numbers; a client whose replica is killed mid-stream resumes on the other with `after=N`, with no gap and no repeat.
"""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from comfybatch.local.fleet import free_port, wait_for_http
from tests.dashboard.conftest import API_KEY, AUTH, DashboardPlatform, slow_spec
from tests.platform.conftest import clean_env

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(300)]


Replica = tuple[subprocess.Popen[bytes], str]  # the process and its base URL


def _start_replica(platform: DashboardPlatform, root: Path, name: str) -> Replica:
    port = free_port()
    env = clean_env(PREFECT_API_URL=platform.api_url, PREFECT_HOME=str(root / f"prefect-{name}"),
                    COMFYBATCH_CONFIG_FILE=os.devnull, COMFYBATCH_OUTPUT_ROOT=str(platform.out),
                    COMFYBATCH_API_KEYS=f"ci:{API_KEY}", COMFYBATCH_DASHBOARD_PORT=str(port))  # fmt: skip
    log = root / f"{name}.log"
    with log.open("wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "comfybatch.dashboard"], env=env, stdout=sink,
                                   stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_for_http(f"{url}/health", process, what=f"dashboard {name}", timeout_s=60, log=log)
    return process, url


@pytest.fixture
def replicas(dashboard_platform: DashboardPlatform, tmp_path: Path) -> Iterator[list[Replica]]:
    """Two `python -m comfybatch.dashboard` processes on the platform's Prefect server and output root."""
    started = [_start_replica(dashboard_platform, tmp_path, name) for name in ("a", "b")]
    yield started
    for process, _ in started:
        if process.poll() is None:
            process.terminate()
            process.wait(10)


def _events_url(base: str, batch_id: str, after: int) -> str:
    return f"{base.replace('http://', 'ws://')}/api/batches/{batch_id}/events?after={after}"


async def _read(base: str, batch_id: str, after: int, *, until: int | None = None) -> list[dict[str, Any]]:
    """Messages after `after` until the stream closes (or `until` of them have come)."""
    messages: list[dict[str, Any]] = []
    async with websockets.connect(_events_url(base, batch_id, after), additional_headers=AUTH) as socket:
        with anyio.fail_after(180):
            async for frame in socket:
                messages.append(json.loads(frame))
                if until is not None and len(messages) >= until:
                    break
    return messages


def _facts(messages: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [(m["seq"], m["type"], m.get("key"), m.get("state")) for m in messages]


async def test_a_client_moved_to_another_replica_mid_stream_misses_and_repeats_nothing(
    replicas: list[Replica],
) -> None:
    """Replica A streams the first messages and is SIGKILLed; B continues from A's last number to the run's end, and
    what the client saw is exactly B's own replay of the whole batch."""
    (process_a, url_a), (_, url_b) = replicas
    async with httpx.AsyncClient(base_url=url_a, timeout=30) as http:
        created = await http.post("/api/batches", headers=AUTH,
                                  json=slow_spec("dash-replicas", *"abcdef", seconds=1.5))  # fmt: skip
    assert created.status_code == 202, created.text
    batch_id = created.json()["batch_id"]

    first = await _read(url_a, batch_id, 0, until=3)
    process_a.send_signal(signal.SIGKILL)
    process_a.wait(10)
    with pytest.raises((ConnectionClosed, OSError)):
        await _read(url_a, batch_id, first[-1]["seq"])
    rest = await _read(url_b, batch_id, first[-1]["seq"])
    replay = await _read(url_b, batch_id, 0)

    seen = first + rest
    assert [m["seq"] for m in seen] == list(range(1, len(seen) + 1))
    assert seen[-1]["type"] == "run.completed"
    assert len({m["key"] for m in seen if m["type"] == "item.done"}) == 6
    assert _facts(seen) == _facts(replay)
