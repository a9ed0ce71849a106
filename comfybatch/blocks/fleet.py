"""The fleet: servers from configuration (`comfybatch.toml` or `COMFYUI_URLS`) plus saved blocks.

Configured servers are written to blocks so they show in the Prefect UI; servers added there as
blocks join the fleet too. Every server gets its `comfy:<name>` global concurrency limit.
"""

import os
import tomllib
from collections.abc import Sequence
from typing import Any

import httpx
from prefect.client.orchestration import get_client
from pydantic import SecretStr, ValidationError

from comfybatch.blocks.server import ComfyUIServer, ServerConfig, name_from_url
from comfybatch.errors import ConfigError
from comfybatch.settings import Settings

_NOT_FOUND = 404


def configured_servers(settings: Settings) -> list[ServerConfig]:
    """Servers named by `comfybatch.toml` (`[[servers]]` tables) or, failing that, `COMFYUI_URLS`.

    Raises:
        ConfigError naming the file and entry.
    """
    path = settings.config_file
    if path.is_file():
        try:
            entries = tomllib.loads(path.read_text(encoding="utf-8")).get("servers", [])
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        return [_from_entry(entry, index, settings, path=str(path)) for index, entry in enumerate(entries, 1)]
    return [
        ServerConfig(name=name_from_url(url), url=url, slots=settings.default_slots) for url in settings.comfyui_urls
    ]


def _from_entry(entry: Any, index: int, settings: Settings, *, path: str) -> ServerConfig:
    if not isinstance(entry, dict) or "url" not in entry:
        raise ConfigError(f'{path}: [[servers]] entry {index} needs at least url = "http://…"')
    token_env = entry.get("api_token_env")  # secrets come from the environment, never the file
    token = os.environ.get(token_env) if token_env else None
    try:
        return ServerConfig(
            name=entry.get("name") or name_from_url(entry["url"]), url=str(entry["url"]).rstrip("/"),
            slots=entry.get("slots", settings.default_slots), labels=tuple(entry.get("labels", ())),
            api_token=SecretStr(token) if token else None,
        )  # fmt: skip
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: [[servers]] entry {index}: {problems}") from None


async def sync_fleet(servers: Sequence[ServerConfig], *, saved: Sequence[ServerConfig] | None = None) -> None:
    """Save `servers` as blocks (those that changed) and create or update their concurrency limits."""
    if saved is None:
        saved = await saved_servers()
    # Every write is a transaction on the Prefect server (SQLite by default): write only what changed.
    current = {server.name: server for server in saved}
    for server in servers:
        if current.get(server.name) != server:
            block = ComfyUIServer(url=server.url, api_token=server.api_token, slots=server.slots,
                                  labels=list(server.labels))  # fmt: skip
            await block.asave(server.name, overwrite=True)
    await sync_limits(servers)


async def sync_limits(servers: Sequence[ServerConfig]) -> None:
    """One global concurrency limit per server, `comfy:<name>`, sized to its slots."""
    async with get_client() as client:
        limits = {limit.name: limit.limit for limit in await client.read_global_concurrency_limits(limit=200)}
        for server in servers:
            if limits.get(server.limit_name) != server.slots:
                await client.upsert_global_concurrency_limit_by_name(server.limit_name, server.slots)


async def saved_servers() -> list[ServerConfig]:
    """`ComfyUI Server` blocks, as configs (disabled ones included; callers filter)."""
    slug = ComfyUIServer.get_block_type_slug()
    async with get_client() as client:
        try:
            documents = await client.read_block_documents_by_type(slug)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != _NOT_FOUND:
                raise
            # Unknown type: register it (a write, so only when needed), then nothing is saved yet.
            await ComfyUIServer.aregister_type_and_schema()
            return []
    return [_config(document.name, document.data) for document in documents if document.name]


def _config(name: str, data: dict[str, Any]) -> ServerConfig:
    return ComfyUIServer.model_validate(data).config(name)


async def load_fleet(settings: Settings, *, only: Sequence[str] = ()) -> list[ServerConfig]:
    """Configured servers (synced to blocks first) plus any other enabled saved servers.

    Raises:
        ConfigError when the fleet is empty or `only` names an unknown server.
    """
    configured = configured_servers(settings)
    saved = await saved_servers()
    if configured:
        await sync_fleet(configured, saved=saved)
    by_name = {server.name: server for server in saved if server.enabled}
    by_name.update({server.name: server for server in configured})
    if unknown := sorted(set(only) - set(by_name)):
        raise ConfigError(f"unknown server(s) {unknown}; the fleet has {sorted(by_name)}")
    fleet = [by_name[name] for name in (only or sorted(by_name))]
    if not fleet:
        raise ConfigError(
            "no ComfyUI servers configured: set COMFYUI_URLS=http://host:8188[,...], write comfybatch.toml, "
            "add a 'ComfyUI Server' block in the Prefect UI, or start the demo fleet (comfybatch demo)"
        )
    await sync_limits(fleet)
    return fleet
