"""Connections to a configured server: `ServerConfig` stays a plain config model, free of the ComfyUI client."""

from contextlib import AbstractAsyncContextManager

from comfybatch.blocks.server import ServerConfig
from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.session import borrow_session


def client_for(server: ServerConfig) -> ComfyClient:
    """A new client; the caller closes it (probes, one-off calls)."""
    return ComfyClient(server.url, name=server.name, api_key=_token(server))


def session_for(server: ServerConfig) -> AbstractAsyncContextManager[ComfyClient]:
    """Borrow the process's shared client for this server (one HTTP pool, one socket); jobs use this."""
    return borrow_session(server.url, name=server.name, api_key=_token(server))


def _token(server: ServerConfig) -> str | None:
    return server.api_token.get_secret_value() if server.api_token else None
