"""FastAPI dependencies: settings, the launcher and the API-key check (overridable in tests)."""

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from comfybatch.dashboard.launcher import Launcher
from comfybatch.settings import Settings


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_launcher(request: Request) -> Launcher:
    launcher: Launcher = request.app.state.launcher
    return launcher


def require_key(request: Request, settings: Annotated[Settings, Depends(get_app_settings)]) -> str:
    """The name of the API key the request carries (`Authorization: Bearer <key>`).

    Every configured key is compared in constant time, so timing tells nothing about which one is close.
    """
    if settings.api_auth_disabled:
        return "anonymous"
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    matched: str | None = None
    if scheme.lower() == "bearer" and token:
        for name, key in settings.api_keys.items():
            if hmac.compare_digest(token.encode(), key.encode()):
                matched = name
    if matched is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, "a valid API key is required", headers={"WWW-Authenticate": "Bearer"}
        )
    return matched


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
LauncherDep = Annotated[Launcher, Depends(get_launcher)]
KeyName = Annotated[str, Depends(require_key)]
