"""The cluster: PostgreSQL, one Prefect server on it, the `comfybatch` process work pool with two workers, four
ComfyUI servers; a batch in shards on both workers survives one worker's machine dying, with nobody's help."""

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfybatch.local.fleet import LocalComfyServer, LocalFleet
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.testing.cluster import POOL, LocalWorker, register
from comfybatch.testing.fleet import HarnessFleet
from comfybatch.testing.postgres import INSTALL_HINT, LocalPostgres, find_postgres
from tests.platform.conftest import TERMINAL, api_call, api_json, clean_env, wait_until
from tests.support.batches import delay_spec, executions, finished_records, spec_nonces

MISSING = f"PostgreSQL server binaries not found (/usr/lib/postgresql/<version>/bin); {INSTALL_HINT}"
pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(find_postgres() is None and os.environ.get("CI") != "true", reason=MISSING),
]
IMAGES, SHARD_SIZE, SLOTS = 400, 100, 2
# The rerun automation moves a crashed batch run on (AwaitingRetry) within this; a Crashed state older than it is the
# run's end. Measured: well under a second, but the automation reacts through Prefect's event stream, so allow for load.
RERUN_GRACE_S = 30.0


@dataclass
class QueueSampler:
    """Samples every server's `/queue` (running + pending) from a thread: the most in flight at once, per server."""

    servers: list[LocalComfyServer]
    peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        with httpx.Client(timeout=5) as http:
            while not self.stop.is_set():
                for server in self.servers:
                    try:
                        queue = http.get(f"{server.url}/queue").json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    inflight = len(queue.get("queue_running", [])) + len(queue.get("queue_pending", []))
                    self.peak[server.name] = max(self.peak.get(server.name, 0), inflight)
                self.samples += 1
                self.stop.wait(0.2)


@contextlib.contextmanager
def sampling(servers: list[LocalComfyServer]) -> Iterator[QueueSampler]:
    """A `QueueSampler` running until the block ends."""
    sampler = QueueSampler(servers)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        sampler.stop.set()
        thread.join(10)


@dataclass
class Cluster:
    """PostgreSQL, Prefect on it with the pool, deployments and automations registered, four ComfyUI servers."""

    root: Path
    fleet: LocalFleet
    prefect: LocalPrefectServer
    env: dict[str, str]

    def workers(self, test: str) -> list[LocalWorker]:
        return [LocalWorker(f"{test}-{name}", self.root / test / name, self.env) for name in ("a", "b")]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """Four ComfyUI servers and PostgreSQL starting side by side, then Prefect on PostgreSQL, then `register`."""
    if find_postgres() is None:
        pytest.fail(MISSING, pytrace=False)
    root = tmp_path_factory.mktemp("cluster")
    fleet = HarnessFleet(root / "comfy", count=4, checkpoint=False)
    for server in fleet.servers:
        server.start()  # spawned now, waited for below: they start while PostgreSQL and Prefect do
    try:
        with LocalPostgres(root / "postgres") as postgres:
            prefect = LocalPrefectServer(root / "prefect", database_url=postgres.url)
            prefect.start()
            try:
                for server in fleet.servers:
                    server.wait_ready()
                env = clean_env(
                    PREFECT_API_URL=prefect.api_url, COMFYUI_URLS=",".join(server.url for server in fleet.servers),
                    COMFYBATCH_CONFIG_FILE=os.devnull, COMFYBATCH_OUTPUT_ROOT=str(root / "out"),
                    COMFYBATCH_DEFAULT_SLOTS=str(SLOTS), COMFYBATCH_RETRY_BACKOFF_S="0.2",
                )  # fmt: skip
                register({**env, "PREFECT_HOME": str(root / "register")}, folder=root / "register")
                yield Cluster(root, fleet, prefect, env)
            finally:
                prefect.stop()
    finally:
        fleet.stop()


@contextlib.contextmanager
def running(workers: list[LocalWorker], api: str) -> Iterator[Any]:
    """The workers started and online until the block ends; yields their log tails for failure messages."""

    def context() -> str:
        return "\n".join(worker.tail() for worker in workers)

    try:
        for worker in workers:
            worker.start()
        wait_until(lambda: {w["name"] for w in api_json(api_call("POST", f"{api}/work_pools/{POOL}/workers/filter",
                                                                  json={}))} >= {w.name for w in workers},
                   timeout_s=90, what="the workers online", context=context)  # fmt: skip
        yield context
    finally:
        for worker in workers:
            worker.stop()


def _start_batch(api: str, spec: BatchSpec) -> dict[str, Any]:
    deployment = api_json(api_call("GET", f"{api}/deployments/name/generate-batch/generate-batch"))
    run: dict[str, Any] = api_json(api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run",
                                            json={"parameters": {"spec": spec.model_dump(mode="json")}}))  # fmt: skip
    return run


def _runs(api_url: str, name_like: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"name": {"like_": name_like}}, "sort": "EXPECTED_START_TIME_ASC", "limit": 200}
    runs: list[dict[str, Any]] = api_json(api_call("POST", f"{api_url}/flow_runs/filter", json=body))
    return runs


def _pid(run: dict[str, Any]) -> int | None:
    infra = run.get("infrastructure_pid") or ""
    tail = infra.rpartition(":")[2]
    return int(tail) if tail.isdigit() else None


def _iso_to_epoch(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_cluster_batch_survives_a_worker_killed_mid_batch(cluster: Cluster) -> None:
    """400 images in four shards on two workers; one worker's machine is SIGKILLed mid-batch: its shards are marked
    Crashed by the zombie automation and run again on the other worker by the batch itself, so all 400 images
    land, none executed twice, no server ever holds more than its slots, and the batch completes untouched."""
    api, fleet = cluster.prefect.api_url, cluster.fleet
    spec = delay_spec("sharded", seconds=0.2, count=IMAGES, servers=[], shard_size=SHARD_SIZE)
    workers = cluster.workers("sharded")
    with running(workers, api) as context, sampling(fleet.servers) as sampler:
        started = time.time()
        parent = _start_batch(api, spec)
        victim, killed_at = _kill_a_shard_worker(api, workers, parent["id"], cluster.root / "out" / spec.name,
                                                 context)  # fmt: skip
        ended = wait_until(lambda: _terminal(api, parent["id"]), timeout_s=600, what="the batch's end",
                           context=context)  # fmt: skip

    shard_runs = _runs(api, f"{spec.name}-shard-%")
    crashed = [run for run in shard_runs if run["state_type"] == "CRASHED"]
    restarts = [run for run in shard_runs if "-attempt-" in run["name"]]
    manifest = read_manifest(OutputStore(str(cluster.root / "out")), spec.name)
    runs_per_nonce = executions(*fleet.servers)
    finished_at = _iso_to_epoch(ended["end_time"])
    print(f"\ncluster, sharded: {IMAGES} images, {len(shard_runs)} shard runs, killed {victim.name} at "
          f"{killed_at - started:.1f} s; crashed detected after "
          + ", ".join(f"{_iso_to_epoch(run['state']['timestamp']) - killed_at:.1f} s" for run in crashed)
          + "; restarts started after "
          + ", ".join(f"{_iso_to_epoch(run['start_time']) - killed_at:.1f} s" for run in restarts if run["start_time"])
          + f"; batch finished {finished_at - killed_at:.1f} s after the kill ({finished_at - started:.1f} s in all); "
          f"peak in flight per server {sampler.peak} over {sampler.samples} samples")  # fmt: skip
    assert ended["state_type"] == "COMPLETED", ended["state"]
    assert manifest is not None
    assert (manifest["status"] == "done").sum() == IMAGES
    nonces = spec_nonces(spec)
    assert sorted(n for n in runs_per_nonce if n in nonces) == sorted(nonces)
    assert max(runs_per_nonce[n] for n in nonces) == 1, {n: c for n, c in runs_per_nonce.items() if c > 1}
    assert all(run["parent_task_run_id"] for run in shard_runs), "a shard run is not a child of the batch's run"
    assert crashed, "no shard run was marked crashed"
    assert {run["state_type"] for run in restarts} == {"COMPLETED"}
    assert len(restarts) >= len(crashed)
    assert sampler.samples > 0
    assert max(sampler.peak.values()) <= SLOTS


def test_cluster_crashed_batch_runs_again_by_itself(cluster: Cluster) -> None:
    """An unsharded batch whose worker's machine dies mid-batch is marked Crashed, scheduled again by the rerun
    automation, taken by the other worker, and completes: every image once, two executions in the run's history."""
    api, fleet = cluster.prefect.api_url, cluster.fleet
    spec = delay_spec("whole", seconds=0.5, count=48, servers=[])
    workers = cluster.workers("whole")
    with running(workers, api) as context:
        batch = _start_batch(api, spec)

        def holder() -> LocalWorker | None:
            if finished_records(cluster.root / "out" / spec.name) < 8:
                return None
            pid = _pid(api_json(api_call("GET", f"{api}/flow_runs/{batch['id']}")))
            return next((worker for worker in workers if pid in worker.flow_run_pids()), None)

        victim = wait_until(holder, timeout_s=300, what="the batch under way", context=context, interval_s=0.2)
        killed_at = time.time()
        victim.kill_machine()
        ended = wait_until(lambda: _ended_for_good(api, batch["id"]), timeout_s=400 + RERUN_GRACE_S,
                           what="the batch's end", context=context)  # fmt: skip

    history = api_json(api_call("GET", f"{api}/flow_run_states/", params={"flow_run_id": batch["id"]}))
    runs_per_nonce = executions(*fleet.servers)
    manifest = read_manifest(OutputStore(str(cluster.root / "out")), spec.name)
    stamps = {state["name"]: _iso_to_epoch(state["timestamp"]) for state in history}
    print(f"\ncluster, whole batch: killed {victim.name}; batch finished "
          f"{_iso_to_epoch(ended['end_time']) - killed_at:.1f} s after the kill; states "
          f"{[state['name'] for state in history]}; Crashed to AwaitingRetry "
          f"{stamps.get('AwaitingRetry', float('nan')) - stamps.get('Crashed', float('nan')):.3f} s")  # fmt: skip
    assert ended["state_type"] == "COMPLETED", ended["state"]
    assert [state["type"] for state in history].count("RUNNING") == 2
    assert "CRASHED" in [state["type"] for state in history]
    assert manifest is not None
    assert (manifest["status"] == "done").sum() == len(spec_nonces(spec))
    assert all(runs_per_nonce.get(nonce) == 1 for nonce in spec_nonces(spec)), runs_per_nonce


def _terminal(api: str, flow_run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = api_json(api_call("GET", f"{api}/flow_runs/{flow_run_id}"))
    return run if run["state_type"] in TERMINAL else None


def _ended_for_good(api: str, flow_run_id: str) -> dict[str, Any] | None:
    """The batch run once it has ended, not counting the Crashed state the rerun automation is about to move on
    (a read in that window saw the run Crashed, and its history AwaitingRetry a moment later): Crashed counts as the
    end only once it has lasted RERUN_GRACE_S."""
    run = _terminal(api, flow_run_id)
    if run is None or run["state_type"] != "CRASHED":
        return run
    return run if time.time() - _iso_to_epoch(run["state"]["timestamp"]) >= RERUN_GRACE_S else None


def _kill_a_shard_worker(
    api: str, workers: list[LocalWorker], parent_id: str, batch_dir: Path, context: Any
) -> tuple[LocalWorker, float]:
    """Once a quarter of the images are stored, SIGKILL the worker that runs shards but not the batch's own run."""

    def victim() -> LocalWorker | None:
        if finished_records(batch_dir) < IMAGES // 4:
            return None
        parent = api_json(api_call("GET", f"{api}/flow_runs/{parent_id}"))
        running = [run for run in _runs(api, f"{batch_dir.name}-shard-%") if run["state_type"] == "RUNNING"]
        for worker in workers:
            pids = set(worker.flow_run_pids())
            if _pid(parent) not in pids and any(_pid(run) in pids for run in running):
                return worker
        return None

    worker = wait_until(victim, timeout_s=300, what="shards running on the worker without the batch's run",
                        context=context, interval_s=0.2)  # fmt: skip
    killed_at = time.time()
    worker.kill_machine()
    return worker, killed_at
