"""SDK tests reuse the dashboard's live platform: Prefect server, `comfybatch serve`, ComfyUI fleet, uvicorn."""

from tests.dashboard.conftest import dashboard_platform, live_dashboard, platform_prefect

__all__ = ["dashboard_platform", "live_dashboard", "platform_prefect"]
