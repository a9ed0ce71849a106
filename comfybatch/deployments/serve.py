"""Serve the deployments from this process (the one-machine default; each run is a subprocess)."""

from prefect import aserve

from comfybatch.blocks.fleet import load_fleet
from comfybatch.deployments.catalog import deployments
from comfybatch.errors import ConfigError
from comfybatch.settings import get_settings


async def serve_deployments(*, limit: int = 4) -> None:
    """Sync the fleet (blocks and limits) if one is configured, then serve until stopped."""
    settings = get_settings()
    try:
        await load_fleet(settings)
    except ConfigError as exc:  # runs will say so too; serving the forms is still useful
        print(f"warning: {exc}")
    await aserve(*await deployments(settings), limit=limit, pause_on_shutdown=False)
