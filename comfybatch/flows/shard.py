"""`render-shard`: one shard of a batch, a child flow run of the batch's run on any worker of the pool.

It renders the jobs of its plan positions that the journal does not hold as stored, adopting the prompts a crashed
run of it left in flight (by prompt_id, with their leases), and writes no ending: its parent writes the batch's one.
"""

import asyncio
import contextlib
import json
from collections import deque

from prefect import flow, get_run_logger
from prefect.context import FlowRunContext
from pydantic import BaseModel, ConfigDict

from comfybatch.comfy.follow import Timeouts
from comfybatch.errors import BatchConflict
from comfybatch.flows.fleet_watch import FleetWatch
from comfybatch.flows.origin import input_policy_of_run
from comfybatch.flows.plan import load_and_probe, template_classes
from comfybatch.flows.shards import ShardSpec
from comfybatch.flows.workers import drain, planned, recoverable
from comfybatch.models import BatchSpec, JobResult
from comfybatch.outputs.identity import OWNER_FILE, Owner
from comfybatch.outputs.storage import OutputStore
from comfybatch.records import JobJournal
from comfybatch.settings import get_settings
from comfybatch.tasks.dispatch import SlotBroker
from comfybatch.tasks.first_leases import FirstLeases
from comfybatch.tasks.job import JobContext


class ShardReport(BaseModel):
    """What one run of a shard did (the batch's report comes from its parent)."""

    model_config = ConfigDict(frozen=True)

    batch: str
    shard: int
    attempt: int
    rendered: int
    failed: int
    already_stored: int


# No flow_run_name: the parent names each run (`<batch>-shard-2-of-4-attempt-2`), which a template would replace.
@flow(name="render-shard", log_prints=False)
async def render_shard(spec: BatchSpec, shard: ShardSpec) -> ShardReport:
    """Render the jobs of `shard` not stored yet; failed jobs are in the journal, for the parent's ending.

    Raises:
        BatchConflict when the batch folder is no longer held by the shard's parent run (it ended, or another run
        took the folder over); ConfigError for an unusable fleet.
    """
    settings = get_settings()
    store = OutputStore(spec.output or settings.output_root)
    run = FlowRunContext.get()
    run_id = str(run.flow_run.id) if run and run.flow_run else ""
    await asyncio.to_thread(_check_parent, store, shard)
    journal = JobJournal(store, shard.batch_dir)
    async with FirstLeases.configured(settings, only=spec.servers) as first_leases:
        fleet = await load_and_probe(settings, only=spec.servers)
        servers, probes, infos = fleet
        expansion, records, stored, plan = await planned(spec, fleet, journal, settings)
        mine = expansion.jobs[shard.start : shard.stop]
        todo = deque(job for job in mine if job.key not in stored and job.key not in plan.invalid)
        reachable = [server for server in servers if server.name in infos]
        broker = SlotBroker(reachable, batch=spec.name, priority=spec.priority, run_id=run_id,
                            first_leases=first_leases)  # fmt: skip
        context = JobContext(
            broker=broker, store=store, journal=journal, batch_dir=shard.batch_dir,
            timeouts=Timeouts(start_timeout_s=settings.start_timeout_s, idle_timeout_s=settings.idle_timeout_s),
            eligible=plan.eligible, versions={p.name: p.comfyui_version or "" for p in probes},
            recoverable={key: record for key, record in records.items() if recoverable(record)},
            input_policy=input_policy_of_run(settings), warm_routing=settings.warm_routing,
        )  # fmt: skip
        get_run_logger().info("%s %s (attempt %d): %d job(s) to render, %d already stored", spec.name, shard.label,
                              shard.attempt, len(todo), len(mine) - len(todo))  # fmt: skip
        results: list[JobResult] = []
        if todo:
            async with broker:
                watch = FleetWatch(settings, context, mine, only=spec.servers, classes=template_classes(spec.workflow))
                await drain(spec, todo, context, results, total=len(todo), run_id=run_id, settings=settings,
                            watch=watch)
    failed = sum(1 for result in results if result.status == "failed")
    return ShardReport(batch=spec.name, shard=shard.number, attempt=shard.attempt, rendered=len(results) - failed,
                       failed=failed, already_stored=len(mine) - len(results))  # fmt: skip


def _check_parent(store: OutputStore, shard: ShardSpec) -> None:
    """The batch folder must still be held by the run that started this shard; else nobody would write its end."""
    relpath = f"{shard.batch_dir}/{OWNER_FILE}"
    owner = None
    with contextlib.suppress(ValueError, json.JSONDecodeError):
        owner = Owner.model_validate_json(store.read_bytes(relpath)) if store.exists(relpath) else None
    if owner is None or owner.run != shard.parent_run:
        holder = f"run {owner.run}" if owner is not None else "no run"
        raise BatchConflict(
            f"{shard.label} of batch folder {shard.batch_dir!r} belongs to run {shard.parent_run}, but {holder} holds "
            "the folder now: this shard stops; rerun the batch to resume it"
        )
