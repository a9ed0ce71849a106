"""A finished batch of N images as the engine leaves it (request, stored plan, a journal record per job), and
the latency of `GET /api/batches/{id}` on it, read over 30 s after the run ended (as a finished batch is): the
issue's "status of a finished 100,000-image batch < 50 ms". The first read walks the record; later ones do not.

Rendering 100,000 images is out of reach here, so the record is written with the engine's own writers
(`write_plan`, `JobRecord`) and its run is created from the served deployment already Completed, so no runner
takes it. The request names an uploaded sheet, as a client's would.
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from prefect.states import Completed

from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import BatchSpec, JobResult, JobSpec, StoredFile
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobRecord, write_plan

_SETTLED_S = 31.0  # the dashboard keeps the status of a run that ended over 30 s ago


def _write_record(store: OutputStore, spec: BatchSpec, workflow: dict[str, Any], items: int, server: str) -> None:
    def planned(i: int) -> JobSpec:
        return JobSpec.model_construct(batch=spec.name, index=i, key=f"k{i:07d}", item=i, image=0, row=i + 2,
                                       values={"nonce": f"{spec.name}-{i}"}, seed=None, label="item",
                                       workflow=ApiWorkflow(workflow))  # fmt: skip

    jobs = [planned(i) for i in range(items)]
    write_plan(store, spec.name, jobs, {job.key: [server] for job in jobs})
    template = JobRecord(key="k", state="finished", server=server, prompt_id="p", result=JobResult(
        job=JobSpec.model_validate({**jobs[0].__dict__, "workflow": workflow}), status="done", server=server,
        prompt_id="p", files=[StoredFile(uri="x", sha256="0" * 64, size_bytes=1, node_id="3")]))  # fmt: skip
    body = template.model_dump_json()
    for job in jobs:  # the record's own JSON with the job's key: 100,000 pydantic dumps would take minutes
        text = body.replace('"key":"k"', f'"key":"{job.key}"', 2).replace('"index":0', f'"index":{job.index}', 1)
        store.write_bytes(f"{spec.name}/.jobs/{job.key}.json", text.encode())


async def finished_status_reads(
    url: str, auth: dict[str, str], *, deployment: str, output_root: Path, workflow: dict[str, Any], items: int,
    server: str, reads: int = 200,
) -> dict[str, Any]:  # fmt: skip
    """Write the record, create its Completed run, then read its status `reads` times, one after another."""
    name = f"bench-finished-{items}"
    sheet_csv = "nonce\n" + "\n".join(f"{name}-{i}" for i in range(items))
    async with httpx.AsyncClient(base_url=url, headers=auth, timeout=300) as http:
        uploaded = await http.put(f"/api/uploads/{name}.csv", content=sheet_csv.encode(),
                                  headers={"Content-Type": "text/csv"})  # fmt: skip
        uploaded.raise_for_status()
        spec = BatchSpec.model_validate({"name": name, "workflow": workflow, "sheet": uploaded.json()["sheet"],
                                         "bindings": {"nonce": "2.inputs.nonce"}})  # fmt: skip
        async with get_client() as client:  # ended first: a finished batch is read some time after its end
            found = await client.read_deployment_by_name(deployment)
            run = await client.create_flow_run_from_deployment(
                found.id, parameters={"spec": spec.model_dump(mode="json", exclude_defaults=True)}, state=Completed(),
                tags=["comfybatch", "dashboard", "submitted-by:bench"],
            )  # fmt: skip
        ended = time.monotonic()
        await asyncio.to_thread(_write_record, OutputStore(str(output_root)), spec, workflow, items,
                                server)  # fmt: skip
        written_s = time.monotonic() - ended
        await asyncio.sleep(max(0.0, ended + _SETTLED_S - time.monotonic()))
        latencies: list[float] = []
        for _ in range(reads):
            began = time.perf_counter()
            response = await http.get(f"/api/batches/{run.id}")
            latencies.append(time.perf_counter() - began)
            response.raise_for_status()
        counts = response.json()["counts"]
    ordered = sorted(latencies[1:]) or latencies
    return {"items": items, "record_written_s": round(written_s, 1), "first_read_ms": round(1000 * latencies[0], 1),
            "p50_ms": round(1000 * ordered[len(ordered) // 2], 1),
            "p99_ms": round(1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
            "done": counts["done"], "total": counts["total"]}  # fmt: skip
