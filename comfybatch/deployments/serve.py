"""Serve the deployments from this process (the one-machine default; each run is a process of its own).

A triggered batch waits for three things before its first prompt: the runner noticing the new flow run (it
polls every `poll_s`), the run's process starting, and that process loading the flow. All three are kept short:
- the runner looks for runs as soon as Prefect announces a new one (`wake.py`), besides its sub-second poll;
- the flows are added to the runner as flow objects (`Runner.aadd_flow`), so a run starts through Prefect's
  direct starter with the flow in hand, not `python -m prefect.engine` re-reading the deployment and importing
  its entrypoint (`aserve` of RunnerDeployments does the latter);
- that process is forked from a server that has already imported Prefect and comfybatch (`_warm_process`).
"""

import asyncio

from prefect.runner import Runner

from comfybatch.blocks.fleet import load_fleet
from comfybatch.deployments._warm_process import use_warm_processes
from comfybatch.deployments.catalog import catalog
from comfybatch.deployments.wake import start_announced_runs
from comfybatch.errors import ConfigError
from comfybatch.settings import get_settings

DEFAULT_POLL_S = 0.5


async def serve_deployments(*, limit: int = 4, poll_s: float = DEFAULT_POLL_S, warm: bool = True) -> None:
    """Sync the fleet (blocks and limits) if one is configured, then serve until stopped.

    Args:
        limit: How many flow runs at once.
        poll_s: How often the runner asks the Prefect server for runs to start.
        warm: Fork flow-run processes from a warm server (else Prefect's default: a fresh Python per run).
    """
    settings = get_settings()
    if warm:
        use_warm_processes()  # the fork server imports while the fleet syncs and deployments register
    try:
        await load_fleet(settings)
    except ConfigError as exc:  # runs will say so too; serving the forms is still useful
        print(f"warning: {exc}")
    runner = Runner(limit=limit, pause_on_shutdown=False, query_seconds=poll_s)
    for served in catalog(settings):
        await runner.aadd_flow(served.flow, **served.options)
    names = ", ".join(f"{served.flow.name}/{served.options['name']}" for served in catalog(settings))
    print(f"serving {names} (polling every {poll_s:g} s and woken by new runs, "
          f"{'warm forked' if warm else 'cold spawned'} runs)", flush=True)  # fmt: skip
    async with asyncio.TaskGroup() as group:
        waking = group.create_task(start_announced_runs(runner))
        await runner.start()
        waking.cancel()
