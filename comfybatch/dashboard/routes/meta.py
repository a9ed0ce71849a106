"""`/api/workflows` and `/health`."""

import asyncio
from pathlib import Path

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse

from comfybatch.dashboard.deps import KeyName, LauncherDep, SettingsDep
from comfybatch.dashboard.schemas import Health, WorkflowList

router = APIRouter(tags=["meta"])
TEMPLATES_DIR = Path(__file__).resolve().parent.parent.parent / "templates"
_HEALTH_TIMEOUT_S = 3.0


@router.get("/api/workflows")
async def list_workflows(_key: KeyName) -> WorkflowList:
    """The names of the bundled workflow templates."""
    return WorkflowList(workflows=sorted(path.stem for path in TEMPLATES_DIR.glob("*.json")))


async def _comfy_status(client: httpx.AsyncClient, url: str) -> str:
    try:
        response = await client.get(f"{url}/system_stats")
    except httpx.HTTPError as exc:
        return f"unreachable: {type(exc).__name__}"
    return "ok" if response.is_success else f"HTTP {response.status_code}"


@router.get("/health")
async def health(settings: SettingsDep, launcher: LauncherDep) -> JSONResponse:
    """The shim, the Prefect API and each configured ComfyUI server; 503 when any is down."""
    async with httpx.AsyncClient(timeout=_HEALTH_TIMEOUT_S) as client:
        statuses = await asyncio.gather(*(_comfy_status(client, url) for url in settings.comfyui_urls))
    async with asyncio.timeout(_HEALTH_TIMEOUT_S * 2):
        prefect_error = await launcher.healthy()
    comfy = dict(zip(settings.comfyui_urls, statuses, strict=True))
    ok = prefect_error is None and all(status == "ok" for status in comfy.values())
    body = Health(ok=ok, prefect=prefect_error or "ok", comfyui=comfy)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
