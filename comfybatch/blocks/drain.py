"""Draining servers: no new prompts go to them, the ones in flight finish (`comfybatch fleet drain NAME`).

The set lives in one Prefect variable, so it holds for every fleet source and every running batch: each batch's
fleet watch (`flows/fleet_watch.py`) reads it every 2 s, well within the 5 s a change must take to reach them.
"""

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import VariableCreate, VariableUpdate
from prefect.exceptions import ObjectAlreadyExists

from comfybatch.tasks.leases import prefect_client

DRAINING_VARIABLE = "comfybatch_draining"  # the Prefect variable holding the list


async def draining_servers(client: PrefectClient | None = None) -> frozenset[str]:
    """The names of the servers being drained now (through `client`, else a client of this process's settings)."""
    if client is None:
        async with prefect_client() as own:  # closed here: no socket outlives the call
            return await draining_servers(own)
    variable = await client.read_variable_by_name(DRAINING_VARIABLE)
    value = variable.value if variable is not None else None
    return frozenset(str(name) for name in value) if isinstance(value, list) else frozenset()


async def set_draining(name: str, draining: bool) -> frozenset[str]:
    """Drain `name` (or stop draining it); returns the servers being drained afterwards."""
    async with prefect_client() as client:  # one client reads and writes
        names = set(await draining_servers(client))
        if draining:
            names.add(name)
        else:
            names.discard(name)
        value = sorted(names)
        try:
            await client.create_variable(VariableCreate(name=DRAINING_VARIABLE, value=value))
        except ObjectAlreadyExists:
            await client.update_variable(VariableUpdate(name=DRAINING_VARIABLE, value=value))
    return frozenset(names)
