"""FastAPI dependencies: settings, the launcher and the API-key check (overridable in tests)."""

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.requests import HTTPConnection

from comfybatch.dashboard.auth import CHALLENGE, KEY_REQUIRED, authenticated_key_name, bearer_key_name
from comfybatch.dashboard.events import EventHub
from comfybatch.dashboard.launcher import Launcher
from comfybatch.settings import Settings


def get_app_settings(request: HTTPConnection) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_launcher(request: HTTPConnection) -> Launcher:
    launcher: Launcher = request.app.state.launcher
    return launcher


def get_hub(request: HTTPConnection) -> EventHub:
    hub: EventHub = request.app.state.hub
    return hub


def require_key(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> str:
    """The name of the API key the request carries (`Authorization: Bearer <key>`).

    `ApiGuard` has checked it already; only a request the guard did not see is checked here.
    """
    matched = authenticated_key_name(request.scope) or bearer_key_name(request.headers, settings)
    if matched is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, KEY_REQUIRED, headers=CHALLENGE)
    return matched


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
HubDep = Annotated[EventHub, Depends(get_hub)]
KeyName = Annotated[str, Depends(require_key)]
