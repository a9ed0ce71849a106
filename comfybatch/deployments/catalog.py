"""Every deployment comfybatch serves: the single source of truth for names and schedules."""

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule
from prefect.deployments.runner import RunnerDeployment

from comfybatch.deployments.names import GENERATE_BATCH, SCHEDULED_PRODUCTION
from comfybatch.settings import Settings

__all__ = ["GENERATE_BATCH", "SCHEDULED_PRODUCTION", "Served", "catalog"]


@dataclass(frozen=True)
class Served:
    """A flow and the options of its deployment (`Flow.to_deployment` / `Runner.add_flow` keywords)."""

    flow: Flow[..., Any]
    options: dict[str, Any] = field(default_factory=dict)


def catalog(settings: Settings) -> list[Served]:
    """`generate-batch` (on demand: Prefect UI form, REST API, dashboard), its `render-shard` children and
    `scheduled-production`."""
    # Imported here, not at the top: `comfybatch serve` and `prefect.yaml`'s generator need them, nothing else.
    from comfybatch.flows.batch import generate_batch
    from comfybatch.flows.inbox import process_inbox
    from comfybatch.flows.shard import render_shard

    schedule = (
        IntervalSchedule(interval=timedelta(seconds=settings.inbox_interval_s))
        if settings.inbox_interval_s
        else CronSchedule(cron=settings.inbox_cron, timezone=settings.timezone)
    )
    return [
        Served(generate_batch, {
            "name": "generate-batch", "tags": ["comfybatch"],
            "description": "Render a batch: a workflow, items from prompts, a sheet or sweeps. "
                           "Reruns skip stored images.",
        }),
        # Started by generate-batch runs only (a batch over COMFYBATCH_SHARD_SIZE images), never by hand.
        Served(render_shard, {
            "name": "render-shard", "tags": ["comfybatch"],
            "description": "One shard of a large batch, started and followed by the batch's own run.",
        }),
        Served(process_inbox, {
            "name": "scheduled-production", "tags": ["comfybatch"], "schedules": [schedule],
            # One inbox run at a time: a schedule firing while a run is still going is dropped.
            "concurrency_limit": ConcurrencyLimitConfig(limit=1,
                                                        collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW),
            "description": "Turn job sheets dropped in the inbox into batches; sheets move to done/ or failed/.",
        }),
    ]  # fmt: skip


async def deployments(settings: Settings) -> list[RunnerDeployment]:
    """The catalog as RunnerDeployments (for `prefect deploy`-style use; `serve` adds the flows themselves)."""
    return [await served.flow.ato_deployment(**served.options) for served in catalog(settings)]
