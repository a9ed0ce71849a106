"""One batch in shards on 1 and then 2 process workers of the `comfybatch` pool, on the same fleet: wall time,
images per second and CPU per image of each process (the workers' flow runs, the Prefect server, ComfyUI).

    .venv/bin/python bench/cluster.py [--quick] [--database sqlite|postgres] [--servers 4] [--images 400]
                                      [--delay 0.2] [--shard-size 100]

The same processes as `tests/platform/test_cluster.py` (`comfybatch.testing.cluster`). Prints a table and, as its
last line, JSON. On a 2-core machine two workers share the cores with everything else: the second worker can only
show the parallel part (more shards at once), never more CPU. See `bench/README.md`, "Capacity model".
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from _common import cpu_seconds

from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec, Sweep
from comfybatch.testing.cluster import POOL, LocalWorker, register
from comfybatch.testing.fleet import HarnessFleet
from comfybatch.testing.postgres import LocalPostgres

_FOREIGN = ("COMFYUI_URLS", "COMFYBATCH_", "PREFECT_")


def _spec(name: str, images: int, delay_s: float, shard_size: int) -> BatchSpec:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ComfybatchDelay", "inputs": {"image": ["1", 0], "nonce": "", "seconds": delay_s}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }
    nonces: list[Any] = [f"{name}-{time.time_ns()}-{index}" for index in range(images)]
    return BatchSpec(name=name, workflow=graph, bindings={"nonce": "2.inputs.nonce"},
                     sweep=Sweep(axes={"nonce": nonces}), shard_size=shard_size)  # fmt: skip


def _wait(check: Any, *, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (result := check()):
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {timeout_s:g} s")
        time.sleep(0.5)
    return result


def _phase(api: str, env: dict[str, str], root: Path, servers: list[Any], prefect_pid: int, *, workers: int,
           args: argparse.Namespace, database_pid: int | None) -> dict[str, Any]:  # fmt: skip
    """Run one batch with `workers` workers; CPU is counted from each process's own /proc figures."""
    pool = [LocalWorker(f"w{workers}-{index}", root / f"w{workers}-{index}", env) for index in range(workers)]
    for worker in pool:
        worker.start()
    try:
        _wait(lambda: len(httpx.post(f"{api}/work_pools/{POOL}/workers/filter", json={}).json()) >= workers,
              timeout_s=90, what="workers online")  # fmt: skip
        before = _server_cpu(prefect_pid, database_pid, servers)
        spec = _spec(f"bench-w{workers}", args.images, args.delay, args.shard_size)
        deployment = httpx.get(f"{api}/deployments/name/generate-batch/generate-batch").json()
        run = httpx.post(f"{api}/deployments/{deployment['id']}/create_flow_run",
                         json={"parameters": {"spec": spec.model_dump(mode="json")}}).json()  # fmt: skip
        seen: dict[int, float] = {}

        def ended() -> dict[str, Any] | None:
            for worker in pool:  # flow-run processes end: keep each one's last figure
                for pid in worker.flow_run_pids():
                    seen[pid] = max(seen.get(pid, 0.0), cpu_seconds(pid, descendants=False))
            state = httpx.get(f"{api}/flow_runs/{run['id']}").json()
            return state if state["state_type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") else None

        final = _wait(ended, timeout_s=1800, what="the batch")
        # The workers' own polling counts too: it is orchestration CPU on the worker machine.
        polling = sum(cpu_seconds(worker.process.pid, descendants=False) for worker in pool if worker.process)
        orchestrator = sum(seen.values()) + polling
        after = _server_cpu(prefect_pid, database_pid, servers)
    finally:
        for worker in pool:
            worker.stop()
    wall = final["total_run_time"] or 0.0
    return {
        "workers": workers, "state": final["state_type"], "images": args.images, "run_s": round(wall, 1),
        "images_per_s": round(args.images / wall, 2) if wall else None,
        "orchestrator_ms_per_image": round(1000 * orchestrator / args.images, 1),
        "prefect_ms_per_image": round(1000 * (after["prefect"] - before["prefect"]) / args.images, 1),
        "postgres_ms_per_image": round(1000 * (after["postgres"] - before["postgres"]) / args.images, 1),
        "comfyui_ms_per_image": round(1000 * (after["comfyui"] - before["comfyui"]) / args.images, 1),
    }  # fmt: skip


def _server_cpu(prefect_pid: int, database_pid: int | None, servers: list[int]) -> dict[str, float]:
    """CPU seconds so far of the Prefect server, PostgreSQL (its backends are its children) and ComfyUI."""
    return {"prefect": cpu_seconds(prefect_pid), "postgres": cpu_seconds(database_pid) if database_pid else 0.0,
            "comfyui": sum(cpu_seconds(pid) for pid in servers)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 images, shards of 50")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--shard-size", type=int, default=100)
    args = parser.parse_args()
    if args.quick:
        args.images, args.shard_size = 200, 50
    root = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    postgres = LocalPostgres(root / "postgres") if args.database == "postgres" else None
    with HarnessFleet(root / "comfy", count=args.servers, checkpoint=False) as fleet:
        database_url = postgres.start() if postgres is not None else None
        prefect = LocalPrefectServer(root / "prefect", database_url=database_url)
        try:
            prefect.start()
            assert prefect.process is not None
            env = {key: value for key, value in os.environ.items() if not key.startswith(_FOREIGN)}
            env.update(PREFECT_API_URL=prefect.api_url, COMFYUI_URLS=",".join(s.url for s in fleet.servers),
                       COMFYBATCH_CONFIG_FILE=os.devnull, COMFYBATCH_OUTPUT_ROOT=str(root / "out"))  # fmt: skip
            register({**env, "PREFECT_HOME": str(root / "register")}, folder=root / "register", zombies=False)
            servers = [s.process.pid for s in fleet.servers if s.process is not None]
            database_pid = postgres.process.pid if postgres is not None and postgres.process is not None else None
            results = [_phase(prefect.api_url, env, root, servers, prefect.process.pid, workers=count, args=args,
                              database_pid=database_pid) for count in (1, 2)]  # fmt: skip
        finally:
            prefect.stop()
            if postgres is not None:
                postgres.stop()
    ideal = args.images * args.delay / args.servers
    print(f"\n{args.images} images, Delay {args.delay} s, {args.servers} servers (ideal {ideal:.1f} s), shards of "
          f"{args.shard_size}, Prefect on {args.database}, {os.cpu_count()} cores")  # fmt: skip
    print(f"{'workers':>8} {'run s':>7} {'img/s':>7} {'orch ms/img':>12} {'prefect ms/img':>15} {'pg ms/img':>10} "
          f"{'comfy ms/img':>13}")  # fmt: skip
    for r in results:
        print(f"{r['workers']:>8} {r['run_s']:>7} {r['images_per_s']:>7} {r['orchestrator_ms_per_image']:>12} "
              f"{r['prefect_ms_per_image']:>15} {r['postgres_ms_per_image']:>10} "
              f"{r['comfyui_ms_per_image']:>13}")  # fmt: skip
    print(json.dumps({"bench": "cluster", "database": args.database, "ideal_s": round(ideal, 1), "phases": results}))


if __name__ == "__main__":
    sys.exit(main())
