"""A batch before any GPU time: its jobs and which servers can run them (the dry run, outside a flow run).

The dashboard uses it to validate a request, to list a batch's jobs before they start and to count
queued images for quotas; expansion is deterministic, so the keys are the ones the flow computes.
"""

from dataclasses import dataclass

from comfybatch.comfy.object_info import merge_object_infos
from comfybatch.expansion import Expansion, expand_batch
from comfybatch.flows.plan import FleetPlan, load_and_probe, plan_fleet, resolve_workflow
from comfybatch.inputs import InputPolicy
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings


@dataclass(frozen=True)
class BatchPreview:
    """The expanded jobs of a request and the fleet's verdict on them."""

    expansion: Expansion
    plan: FleetPlan


async def preview_batch(spec: BatchSpec, settings: Settings) -> BatchPreview:
    """Expand `spec` and check every job against every reachable server's `/object_info`.

    Raises:
        BatchRequestError / WorkflowError naming what is wrong; ConfigError when no server answers.
    """
    servers, probes, infos = await load_and_probe(settings, only=spec.servers)
    template = resolve_workflow(spec.workflow, infos)
    # Only the dashboard previews, for requests over the API: the same file rules as their runs.
    expansion = expand_batch(spec, template, object_info=merge_object_infos(infos.values()),
                             input_policy=InputPolicy.for_api(settings))  # fmt: skip
    slots = {server.name: server.slots for server in servers if server.name in infos}
    return BatchPreview(expansion, plan_fleet(expansion.jobs, probes, infos, slots=slots))
