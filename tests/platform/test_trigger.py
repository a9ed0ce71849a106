"""A batch triggered on the served generate-batch deployment, as the API does: its own flow run with its task
runs, started from serve's warm fork server rather than a fresh Python, and cancellable with its hook run."""

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import SuiteFleet
from tests.platform.conftest import (
    TERMINAL,
    ServeProcess,
    api_call,
    api_json,
    children,
    serve_env,
    serving,
    wait_until,
)
from tests.support.batches import delay_spec

pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Served:
    api_url: str
    out: Path
    serve: ServeProcess
    server: str

    def trigger(self, name: str, *, seconds: float, count: int) -> dict[str, Any]:
        spec = delay_spec(name, seconds=seconds, count=count, servers=[self.server])
        deployment = api_json(api_call("GET", f"{self.api_url}/deployments/name/{GENERATE_BATCH}"))
        body = {"parameters": {"spec": spec.model_dump(mode="json")}, "name": name}
        run: dict[str, Any] = api_json(
            api_call("POST", f"{self.api_url}/deployments/{deployment['id']}/create_flow_run", json=body)
        )
        return run

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = api_json(api_call("GET", f"{self.api_url}/flow_runs/{flow_run_id}"))
        return run

    def wait_terminal(self, flow_run_id: str) -> dict[str, Any]:
        return wait_until(lambda: (run := self.flow_run(flow_run_id))["state_type"] in TERMINAL and run,
                          timeout_s=120, what="the triggered run to end", context=self.serve.tail,
                          interval_s=0.1)  # fmt: skip

    def records(self, name: str) -> list[dict[str, Any]]:
        return [json.loads(path.read_text()) for path in self.out.glob(f"{name}*/.jobs/*.json")]


@pytest.fixture(scope="module")
def served(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("trigger")
    env = serve_env(platform_prefect.api_url, comfy_fleet, root)
    args = tuple(os.environ.get("COMFYBATCH_TEST_SERVE_ARGS", "").split())
    with serving(platform_prefect.api_url, env, root, GENERATE_BATCH, args=args) as serve:
        yield Served(platform_prefect.api_url, root / "out", serve, name_from_url(comfy_fleet.servers[0].url))


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_triggered_batch_is_its_own_flow_run_forked_warm_with_its_task_runs(served: Served) -> None:
    """A run created on the deployment runs in a process forked from serve's fork server (which preloaded the
    flows), completes as its own flow run of generate-batch, with one completed task run per image."""
    run = served.trigger("triggered", seconds=1.0, count=3)

    def forked_run() -> list[int]:
        servers = [pid for pid in children(served.serve.process.pid) if "multiprocessing.forkserver" in _cmdline(pid)]
        return [child for server in servers for child in children(server)]

    assert "comfybatch.flows.batch" in " ".join(_cmdline(pid) for pid in children(served.serve.process.pid))
    wait_until(forked_run, timeout_s=30, what="the flow-run process, forked from the fork server",
               context=served.serve.tail, interval_s=0.1)  # fmt: skip
    ended = served.wait_terminal(run["id"])

    assert (ended["state_type"], ended["name"], ended["deployment_id"]) == ("COMPLETED", "triggered",
                                                                           run["deployment_id"])  # fmt: skip
    body = {"flow_runs": {"id": {"any_": [run["id"]]}}}
    tasks = api_json(api_call("POST", f"{served.api_url}/task_runs/filter", json=body))
    assert sorted((task["name"], task["state_type"]) for task in tasks) == [
        (f"triggered-{number}-item", "COMPLETED") for number in range(1, 4)  # <batch>-<n from 1>-<slug>
    ]


def test_first_image_of_a_triggered_batch_comes_within_seconds(served: Served) -> None:
    """From the create call to the first image stored takes at most 5 s on this shared test machine (a cold spawn
    per run and a 10 s poll took 10-20 s here); the flow run's Pending -> Running takes at most 2.5 s."""
    called = time.time()
    run = served.trigger("quick-first", seconds=0.2, count=2)
    wait_until(lambda: [r for r in served.records("quick-first") if r.get("state") == "finished"], timeout_s=60,
               what="a first image", context=served.serve.tail, interval_s=0.05)  # fmt: skip
    first_image_s = time.time() - called
    served.wait_terminal(run["id"])
    states = api_json(api_call("GET", f"{served.api_url}/flow_run_states/", params={"flow_run_id": run["id"]}))
    at = {}
    for state in sorted(states, key=lambda s: s["timestamp"]):
        at.setdefault(state["type"], state["timestamp"])
    start_s = _seconds(at["RUNNING"]) - _seconds(at["PENDING"])

    assert first_image_s <= 5.0, (first_image_s, at)
    assert start_s <= 2.5, at


def test_cancelling_a_triggered_batch_runs_its_on_cancellation_hook(served: Served) -> None:
    """Cancelling a running triggered batch (as the dashboard does) ends it Cancelled, and its on_cancellation hook
    records the image in flight as cancelled with the requester's words."""
    run = served.trigger("cancelled", seconds=2.0, count=4)
    wait_until(lambda: any(r.get("state") == "finished" for r in served.records("cancelled")), timeout_s=60,
               what="a first image", context=served.serve.tail)  # fmt: skip
    body = {"state": {"type": "CANCELLING", "message": "cancelled by the test"}, "force": True}
    api_json(api_call("POST", f"{served.api_url}/flow_runs/{run['id']}/set_state", json=body))

    ended = served.wait_terminal(run["id"])

    assert ended["state_type"] == "CANCELLED", ended["state"]
    cancelled = wait_until(
        lambda: [r for r in served.records("cancelled") if (r.get("result") or {}).get("status") == "cancelled"],
        timeout_s=30, what="a job recorded cancelled by the hook", context=served.serve.tail,
    )  # fmt: skip
    assert {r["result"]["error"] for r in cancelled} == {"cancelled by the test"}


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()
