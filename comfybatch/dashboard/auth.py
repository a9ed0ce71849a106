"""The API key a request carries: `Authorization: Bearer <key>` parsed and matched to a key's name here only.

The guard authenticates each `/api` HTTP request once and leaves the name on `request.state`; the event stream,
whose key may come in its first message, resolves it with the same functions.
"""

import hmac
from collections.abc import Mapping

from starlette.types import Scope

from comfybatch.settings import Settings

KEY_REQUIRED = "a valid API key is required"
CHALLENGE = {"WWW-Authenticate": "Bearer"}
_STATE_KEY = "api_key_name"  # in the ASGI scope's per-request state, which `request.state` reads


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


def bearer_key_name(headers: Mapping[str, str], settings: Settings) -> str | None:
    """The name of the key in `Authorization: Bearer <key>` (scheme in any case), or None."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return key_name_of(token if scheme.lower() == "bearer" else "", settings)


def remember_key_name(scope: Scope, name: str) -> None:
    """Keep the authenticated key's name for the rest of this request (read back by `authenticated_key_name`)."""
    scope.setdefault("state", {})[_STATE_KEY] = name


def authenticated_key_name(scope: Scope) -> str | None:
    """The key name the guard stored for this request, or None when the guard did not run."""
    name = scope.get("state", {}).get(_STATE_KEY)
    return name if isinstance(name, str) else None
