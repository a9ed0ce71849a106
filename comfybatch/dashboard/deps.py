"""FastAPI dependencies: settings, the launcher and the API-key check (overridable in tests)."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from starlette.requests import HTTPConnection

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


def key_name_of(token: str, settings: Settings) -> str | None:
    """The name of the configured key equal to `token`, or None.

    Every configured key is compared in constant time, so timing tells nothing about which one is close.
    """
    if settings.api_auth_disabled:
        return "anonymous"
    matched: str | None = None
    if token:
        for name, key in settings.api_keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                matched = name
    return matched


def require_key(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> str:
    """The name of the API key the request carries (`Authorization: Bearer <key>`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    matched = key_name_of(token if scheme.lower() == "bearer" else "", settings)
    if matched is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
        )
    return matched


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
HubDep = Annotated[EventHub, Depends(get_hub)]
KeyName = Annotated[str, Depends(require_key)]
