"""`/api/workflows`, `/api/servers`, `/health` and `/metrics`."""

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from comfybatch.blocks.connection import client_for
from comfybatch.blocks.fleet import configured_servers, select_fleet
from comfybatch.blocks.server import ServerConfig
from comfybatch.dashboard.deps import HubDep, KeyName, LauncherDep, SettingsDep
from comfybatch.dashboard.launcher import Launcher
from comfybatch.dashboard.metrics import CONTENT_TYPE, gauge
from comfybatch.dashboard.schemas import Health, ServerList, ServerStatus, WorkflowList
from comfybatch.errors import ComfyBatchError
from comfybatch.models import template_names
from comfybatch.problems import why_unreachable
from comfybatch.settings import Settings

logger = logging.getLogger(__name__)
router = APIRouter(tags=["meta"])
_HEALTH_TIMEOUT_S = 3.0
_KNOWN_WHY = frozenset({"timed out", "connection refused", "connection dropped"})


@router.get("/api/workflows")
async def list_workflows(_key: KeyName) -> WorkflowList:
    """The names of the bundled workflow templates."""
    return WorkflowList(workflows=template_names())


async def fleet_servers(settings: Settings, launcher: Launcher) -> list[ServerConfig]:
    """The fleet as the engine sees it: the configured servers plus enabled blocks made in the Prefect UI, by
    name; blocks an earlier configuration wrote (an old demo, a `--server` URL) are not part of it."""
    return select_fleet(configured_servers(settings), await launcher.saved_servers())


@dataclass(frozen=True)
class _Probe:
    """What one ComfyUI server answered: None `reason` when healthy."""

    reason: str | None
    queue_depth: int | None = None


async def _probe(server: ServerConfig) -> _Probe:
    try:
        async with asyncio.timeout(_HEALTH_TIMEOUT_S), client_for(server) as comfy:
            await comfy.get_system_stats()
            queue = await comfy.get_queue()
    except TimeoutError:
        return _Probe("unreachable: timed out")
    except ComfyBatchError as exc:
        # In words when the cause is known; never the message otherwise: it may name a proxy URL with a secret.
        why = why_unreachable(exc)
        known = why in _KNOWN_WHY or why.startswith("answered HTTP")
        return _Probe(f"unreachable: {why if known else type(exc).__name__}")
    return _Probe(None, len(queue.running) + len(queue.pending))


async def _probe_all(servers: list[ServerConfig]) -> list[_Probe]:
    return list(await asyncio.gather(*(_probe(server) for server in servers)))


@router.get("/health")
async def health(settings: SettingsDep, launcher: LauncherDep) -> JSONResponse:
    """The shim, the Prefect API and each fleet ComfyUI server (by URL); 503 when any is down."""
    async with asyncio.timeout(_HEALTH_TIMEOUT_S * 2):
        prefect_error = await launcher.healthy()
    servers = configured_servers(settings) if prefect_error else await fleet_servers(settings, launcher)
    probes = await _probe_all(servers)
    comfy = {server.url: probe.reason or "ok" for server, probe in zip(servers, probes, strict=True)}
    ok = prefect_error is None and all(status == "ok" for status in comfy.values())
    body = Health(ok=ok, prefect=prefect_error or "ok", comfyui=comfy)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


async def _server_statuses(settings: Settings, launcher: Launcher) -> list[ServerStatus]:
    servers = await fleet_servers(settings, launcher)
    probes, active, draining = await asyncio.gather(
        _probe_all(servers), launcher.active_slots(), launcher.draining_servers()
    )
    failures = launcher.probe_failures
    for server, probe in zip(servers, probes, strict=True):
        if probe.reason:
            failures[server.name] = (datetime.now(UTC), probe.reason)
    return [
        ServerStatus(
            name=server.name,
            display_name=server.display_name or server.name,
            url=server.url,
            slots=server.slots,
            health="unreachable" if probe.reason else "ok",
            reason=probe.reason,
            queue_depth=probe.queue_depth,
            in_flight=active.get(server.limit_name, 0),
            draining=server.name in draining,
            last_error=failures[server.name][1] if server.name in failures else None,
            last_error_at=failures[server.name][0].isoformat() if server.name in failures else None,
        )
        for server, probe in zip(servers, probes, strict=True)
    ]


@router.get("/api/servers")
async def list_servers(_key: KeyName, settings: SettingsDep, launcher: LauncherDep) -> ServerList:
    """Each fleet server with its slots, health, ComfyUI queue depth and in-flight count (never its token)."""
    return ServerList(servers=await _server_statuses(settings, launcher))


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(settings: SettingsDep, launcher: LauncherDep, hub: HubDep) -> Response:
    """Prometheus text format: per-server up, queue depth, in-flight and slots, and batches by state (read for this
    scrape); items by state, prompt seconds per server, batch seconds and API latency per route (histograms).

    Unauthenticated like `/health` (scrapers rarely carry bearer keys); it shows server names and counts only.
    """
    statuses, batches = await asyncio.gather(_server_statuses(settings, launcher), launcher.batch_counts())
    gauges = [
        gauge("comfybatch_server_up", "1 when the ComfyUI server answers.", "server",
              [(s.name, 1.0 if s.health == "ok" else 0.0) for s in statuses]),
        gauge("comfybatch_server_queue_depth", "Prompts running or pending in its ComfyUI queue.", "server",
              [(s.name, s.queue_depth) for s in statuses if s.queue_depth is not None]),
        gauge("comfybatch_server_inflight", "Active slots of its comfy:<name> concurrency limit.", "server",
              [(s.name, s.in_flight) for s in statuses]),
        gauge("comfybatch_server_slots", "Prompts it may have in flight at once.", "server",
              [(s.name, s.slots) for s in statuses]),
        gauge("comfybatch_batches", "generate-batch flow runs by state type (newest 200).", "state",
              dict(sorted(batches.items()))),
    ]  # fmt: skip
    return Response(hub.metrics.exposition(gauges), media_type=CONTENT_TYPE)
