"""The platform commands of the `comfybatch` CLI (registered in `comfybatch.cli`)."""

import asyncio
import sys
from pathlib import Path
from urllib.parse import urlsplit

from comfybatch.deployments.platform import DEFAULT_PREFECT_PORT, PlatformState, home, is_alive, load_state
from comfybatch.settings import get_settings


def up(*, demo: bool = False, demo_servers: int = 2, port: int = DEFAULT_PREFECT_PORT) -> int:
    """Start the platform: Prefect server (SQLite under .comfybatch/), fleet limits, served deployments.

    Args:
        demo: With no ComfyUI configured, start local CPU demo servers with a tiny model (no question asked).
        demo_servers: How many demo servers (about 1 GB of RAM each).
        port: The Prefect server's port (UI and API).
    """
    from comfybatch.deployments import up as platform
    from comfybatch.deployments.platform import server_health

    state = platform.up(demo=demo, demo_servers=demo_servers, port=port)
    for url in state.comfyui_urls:  # tried: GET /system_stats and /queue
        if not (health := server_health(url)).startswith("ok"):
            print(f"warning: ComfyUI {url} is {health} (tried GET {url}/system_stats)", file=sys.stderr)
    ui = state.prefect_api_url.removesuffix("/api")
    print(f"comfybatch is up.\n  dashboard:    {dashboard_link(state)}\n  Prefect UI:   {ui}\n"
          f"  deployments:  generate-batch/generate-batch, process-inbox/scheduled-production\n"
          f"  fleet:        {', '.join(state.comfyui_urls) or 'none configured'}{' (demo)' if state.demo else ''}\n"
          "  next:         comfybatch demo   |   comfybatch status   |   comfybatch stop")  # fmt: skip
    return 0


def dashboard_link(state: PlatformState) -> str:
    """The dashboard's URL; with the platform's own key in the fragment (never sent to a server or logged)."""
    part = state.components.get("dashboard")
    if part is None:
        return "not started"
    key_file = home() / "api-key"
    settings = get_settings()
    own_key = not settings.api_keys and not settings.api_auth_disabled and key_file.is_file()
    return f"{part.url}/#key={key_file.read_text().strip()}" if own_key else f"{part.url}/"


async def stop() -> int:
    """Stop everything `comfybatch up` started (only those processes, by pid).

    A batch running then ends Cancelled, its record saying the platform stopped; running it again resumes it.
    """
    from comfybatch.deployments import up as platform
    from comfybatch.deployments.handover import STOP_REASON

    stopped, handover = await platform.stop(reason=STOP_REASON)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    for run in handover.resumable:
        print(f"  batch {run.name} was running: cancelled; run it again to resume")
    return 0


def status() -> int:
    """Show each component and each ComfyUI server's health and queue depth."""
    from comfybatch.deployments import up as platform

    print("\n".join(platform.status_lines()))
    state = load_state()
    return 0 if state.components and all(is_alive(part) for part in state.components.values()) else 1


def logs(*, lines: int = 40) -> int:
    """Print the last lines of every component's log.

    Args:
        lines: How many lines per log.
    """
    from comfybatch.deployments import up as platform

    for path in platform.log_paths():
        print(f"==> {path} <==")
        if path.is_file():
            print("\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
    return 0


async def restart(*, port: int | None = None) -> int:
    """Stop, then start again with the same kind of fleet (as many demo servers) on the same port.

    A batch running then goes on in a new run of generate-batch (tagged `resumed-from:<old run id>`), which skips
    the images already stored.

    Args:
        port: The Prefect server's port (default: the one it ran on).
    """
    from comfybatch.deployments import up as platform
    from comfybatch.deployments.handover import RESTART_REASON, resume

    state = load_state()
    demo_servers = sum(name.startswith("comfyui:") for name in state.components) or 2
    if port is None:
        port = urlsplit(state.prefect_api_url).port or DEFAULT_PREFECT_PORT
    stopped, handover = await platform.stop(reason=RESTART_REASON)
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    code = await asyncio.to_thread(up, demo=state.demo, demo_servers=demo_servers, port=port)
    for old, new in zip(handover.resumable, await resume(handover, handover.resumable), strict=True):
        print(f"  batch {old.name} resumed: flow run {new.id} (resumed-from:{old.id})")
    return code


async def serve(*, limit: int = 4, poll_s: float = 0.5, cold: bool = False) -> int:
    """Serve the deployments from this process until stopped (what `up` runs in the background).

    Args:
        limit: How many flow runs at once.
        poll_s: How often to ask the Prefect server for runs to start, in seconds.
        cold: Start each flow run in a fresh Python (Prefect's default) instead of forking a warm one.
    """
    from comfybatch.deployments.serve import serve_deployments

    await serve_deployments(limit=limit, poll_s=poll_s, warm=not cold)
    return 0


def platform_demo_target() -> tuple[str, Path] | None:
    """The running platform's API URL and demo output folder, when `up` started a demo fleet."""
    state = load_state()
    parts = state.components
    if state.demo and all(name in parts and is_alive(parts[name]) for name in ("prefect", "serve")):
        return state.prefect_api_url, Path("out").resolve()
    if parts:
        print("the platform runs without the demo fleet; running the demo on its own servers", file=sys.stderr)
    return None
