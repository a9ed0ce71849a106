"""Bring the platform up, report on it, take it down (the functions behind `comfybatch up|status|stop`)."""

import asyncio
import sys
from pathlib import Path

from comfybatch.blocks.fleet import configured_servers
from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.deployments.handover import Handover, batches_under_way, record_ending
from comfybatch.deployments.platform import (
    DEFAULT_PREFECT_PORT,
    Component,
    PlatformState,
    home,
    is_alive,
    load_state,
    local_api_key,
    port_free,
    save_state,
    server_health,
    start_dashboard,
    start_serve,
    stop_component,
    wait_for_deployment,
    wait_for_http,
)
from comfybatch.errors import ConfigError
from comfybatch.settings import get_settings

_STOP_S = 15.0
_SERVE_STOP_S = 45.0


def up(*, demo: bool, demo_servers: int = 2, port: int = DEFAULT_PREFECT_PORT) -> PlatformState:
    """Start whatever is not running yet: Prefect server, demo fleet (if wanted), served deployments.

    Raises:
        ConfigError naming what failed (a taken port, a server that did not start, with its log tail).
    """
    state = load_state()
    _ensure_prefect(state, port)
    save_state(state)
    _ensure_fleet(state, demo=demo, count=demo_servers)
    save_state(state)
    if (old := state.components.pop("serve", None)) is not None:
        stop_component(old)  # the fleet may have changed: serve afresh
    serve = start_serve(state)
    state.components["serve"] = serve
    save_state(state)
    wait_for_deployment(state.prefect_api_url, GENERATE_BATCH, serve=serve)
    _restart_dashboard(state)
    save_state(state)
    return state


def _restart_dashboard(state: PlatformState) -> None:
    """The dashboard on the configured port; its own local key unless the operator configured keys."""
    if (old := state.components.pop("dashboard", None)) is not None:
        stop_component(old)
    settings = get_settings()
    if not port_free(settings.dashboard_port):
        raise ConfigError(f"port {settings.dashboard_port} (the dashboard) is taken by another program: stop it, "
                          "or set COMFYBATCH_DASHBOARD_PORT")  # fmt: skip
    own_key = None if settings.api_keys or settings.api_auth_disabled else local_api_key()
    dashboard = start_dashboard(state, port=settings.dashboard_port, api_key=own_key)
    try:
        wait_for_http(f"{dashboard.url}/openapi.json", component=dashboard, what="the dashboard")
    except ConfigError:
        stop_component(dashboard)  # never leave a process behind that state.json does not name
        raise
    state.components["dashboard"] = dashboard


def _ensure_prefect(state: PlatformState, port: int) -> None:
    current = state.components.get("prefect")
    if current is not None and is_alive(current):
        return
    if not port_free(port):
        raise ConfigError(f"port {port} is taken by another program: stop it, or pass --port to use another one")
    from comfybatch.local.fleet import ServerStartError
    from comfybatch.local.prefect_server import LocalPrefectServer

    server = LocalPrefectServer(home() / "prefect", port=port, ui=True, die_with_parent=False)
    print(f"starting the Prefect server on port {port} ...", file=sys.stderr)
    try:
        server.start()
    except ServerStartError as exc:
        raise ConfigError(f"the Prefect server did not start: {exc}") from None
    assert server.process is not None
    state.components["prefect"] = Component(pid=server.process.pid, marker=f"--port {port}", url=server.api_url,
                                            log=str(server.log_path))  # fmt: skip
    state.prefect_api_url = server.api_url


def _ensure_fleet(state: PlatformState, *, demo: bool, count: int) -> None:
    configured = [server for server in configured_servers(get_settings()) if server.source != "demo"]
    if configured:  # real servers are never replaced by the demo
        state.comfyui_urls, state.demo = [server.url for server in configured], False
        return
    demo_parts = {name: part for name, part in state.components.items() if name.startswith("comfyui:")}
    if demo_parts and all(is_alive(part) for part in demo_parts.values()):
        return
    if not demo and not _ask("No ComfyUI servers are configured. Start a local CPU demo fleet with a tiny model?"):
        print("no fleet: set COMFYUI_URLS or write comfybatch.toml, then `comfybatch restart`", file=sys.stderr)
        return
    from comfybatch.local.fleet import LocalFleet, ServerStartError

    print(f"starting {count} local CPU ComfyUI server(s) (the first time installs ComfyUI: minutes) ...",
          file=sys.stderr)  # fmt: skip
    fleet = LocalFleet(home() / "demo-fleet", count=count, die_with_parent=False)
    try:
        fleet.start()
    except ServerStartError as exc:
        raise ConfigError(f"a demo ComfyUI server did not start: {exc}") from None
    for server in fleet.servers:
        assert server.process is not None
        state.components[f"comfyui:{server.name}"] = Component(
            pid=server.process.pid, marker=f"--port {server.port}", url=server.url, log=str(server.log_path)
        )
    state.comfyui_urls, state.demo = [server.url for server in fleet.servers], True


def _ask(question: str) -> bool:
    if not sys.stdin.isatty():
        return False
    return input(f"{question} [Y/n] ").strip().lower() in ("", "y", "yes")


async def stop(*, reason: str) -> tuple[list[str], Handover]:
    """Stop everything `up` started (serve first, Prefect last); return what was stopped and the batches that were
    running, whose record now says `reason` ended them.
    """
    state = load_state()
    prefect = state.components.get("prefect")
    handover = Handover(state.prefect_api_url)
    if prefect is not None and is_alive(prefect):
        handover = await batches_under_way(state.prefect_api_url)
    order = sorted(state.components, key=lambda name: {"dashboard": 0, "serve": 0, "prefect": 2}.get(name, 1))
    stopped = []
    for name in order:
        if name == "prefect" and handover.runs:
            await record_ending(handover, reason)  # the runner is gone, its server still answers
        # serve's runner cancels its flow runs on SIGTERM, giving each process up to 30 s to end.
        timeout_s = _SERVE_STOP_S if name == "serve" else _STOP_S
        if await asyncio.to_thread(stop_component, state.components[name], timeout_s=timeout_s):
            stopped.append(name)
    save_state(PlatformState())
    return stopped, handover


def status_lines() -> list[str]:
    """One line per component and per ComfyUI server."""
    state = load_state()
    if not state.components:
        return ["the platform is not running (start it with ./quick_start.sh or `comfybatch up`)"]
    lines = [f"{name:<18} {'running' if is_alive(part) else 'STOPPED'}  pid {part.pid}  {part.url}"
             for name, part in state.components.items()]  # fmt: skip
    lines += [f"comfyui {url:<30} {server_health(url)}" for url in state.comfyui_urls]
    if state.prefect_api_url:
        lines.append(f"Prefect UI: {state.prefect_api_url.removesuffix('/api')}")
    return lines


def log_paths() -> list[Path]:
    return [Path(part.log) for part in load_state().components.values() if part.log]
