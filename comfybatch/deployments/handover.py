"""The batches running when `comfybatch stop` or `restart` takes the platform down: their record says why they
ended (not Prefect's "Runner is shutting down."), and after a restart they go on in a new run of the deployment.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import Cancelled

from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.run_tags import resuming

STOP_REASON = "cancelled by comfybatch stop: the platform stopped during the batch; run it again to resume"
RESTART_REASON = (
    "cancelled by comfybatch restart: the platform restarted during the batch, which goes on in a new run "
    "tagged resumed-from:{flow_run_id}"
)
_UNDER_WAY = [StateType.PENDING, StateType.RUNNING, StateType.CANCELLING]
_MAX_RUNS = 200


@dataclass(frozen=True)
class Handover:
    """The generate-batch runs under way when the platform was taken down, as they were just before."""

    api_url: str
    runs: tuple[FlowRun, ...] = ()

    @property
    def resumable(self) -> list[FlowRun]:
        """Runs nobody had asked to cancel."""
        return [run for run in self.runs if run.state is not None and run.state.type != StateType.CANCELLING]


async def batches_under_way(api_url: str) -> Handover:
    """The generate-batch runs pending, running or cancelling on the Prefect server at `api_url`."""
    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(GENERATE_BATCH)
            except ObjectNotFound:
                return Handover(api_url)
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])),
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=_UNDER_WAY))),
                limit=_MAX_RUNS,
            )  # fmt: skip
    return Handover(api_url, tuple(runs))


async def record_ending(handover: Handover, reason: str) -> None:
    """Once the runner is gone, give each run a Cancelled state that says why; a run someone was cancelling keeps
    that person's message. Runs that completed or failed on their own are left as they are.
    """
    with temporary_settings(updates={PREFECT_API_URL: handover.api_url}):
        async with get_client() as client:
            for before in handover.runs:
                now = await client.read_flow_run(before.id)
                if now.state is not None and now.state.type in (StateType.COMPLETED, StateType.FAILED):
                    continue
                cancelling = before.state is not None and before.state.type == StateType.CANCELLING
                message = (before.state.message if cancelling and before.state else None) or reason.format(
                    flow_run_id=before.id
                )
                # force: the runner already wrote Cancelled ("Runner is shutting down.") or died before it could.
                await client.set_flow_run_state(before.id, Cancelled(message=message), force=True)


async def resume(handover: Handover, runs: Sequence[FlowRun]) -> list[FlowRun]:
    """A new run of the deployment per run, with the same `spec` and name, tagged `resumed-from:<old id>`; the
    batch's journal makes it skip the images already stored."""
    created = []
    with temporary_settings(updates={PREFECT_API_URL: handover.api_url}):
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(GENERATE_BATCH)
            for run in runs:
                tags = resuming(run.tags, run.id)
                created.append(await client.create_flow_run_from_deployment(
                    deployment.id, parameters=run.parameters, name=run.name, tags=tags,
                ))  # fmt: skip
    return created
