"""A batch run that crashed (its worker or machine died) runs again by itself, a bounded number of times.

`deploy/rerun-crashed.yaml` is the Prefect automation that reschedules a crashed `generate-batch` run (the same flow
run: its claim on the batch folder and its journal carry over, and in-flight prompts are adopted by prompt_id). Each
execution is a Running state in the run's history; this module counts them and stops a run that crashed too often.
"""

import asyncio
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.states import Crashed

from comfybatch.errors import BatchIncomplete
from comfybatch.flows.ending import record_ending

_READ_S = 10.0


async def executions_of(flow_run_id: str) -> int:
    """How many times the run has started (Running states in its history): 1 on its first execution, and when the
    history cannot be read (the bound is a safeguard; a batch never fails for want of it)."""
    try:
        async with asyncio.timeout(_READ_S), get_client() as client:
            history = await client.read_flow_run_states(UUID(flow_run_id))
    except (httpx.HTTPError, TimeoutError):
        return 1
    return max(1, sum(1 for state in history if state.type == StateType.RUNNING))


async def refuse_after_crashes(flow_run: FlowRun, *, executions: int, attempts: int) -> None:
    """Stop a run starting for the `executions`-th time when `attempts` runs are allowed, after writing the batch's
    record (what exists is kept; the rest is listed as not rendered, with why).

    Raises:
        BatchIncomplete when `executions` > `attempts`.
    """
    if executions <= attempts:
        return
    reason = (f"the run crashed {executions - 1} times (its worker or machine died); not run again by itself: "
              "rerun the batch to resume it once the cause is fixed")  # fmt: skip
    await record_ending(None, flow_run, Crashed(message=reason))
    raise BatchIncomplete(reason, report=None)
