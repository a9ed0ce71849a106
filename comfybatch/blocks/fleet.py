"""The fleet: servers from configuration (`comfybatch.toml`, `COMFYUI_URLS`, the demo) plus blocks made in the UI.

Configured servers are written to blocks (with their source) so they show in the Prefect UI; blocks a
configuration wrote outlive it by no more than the next load. Every server gets its `comfy:<name>` limit.
"""

import asyncio
import contextlib
import logging
import os
import tomllib
from collections.abc import AsyncIterator, Coroutine, Sequence
from typing import Any

import httpx
from prefect.client.orchestration import PrefectClient
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from pydantic import SecretStr, ValidationError

from comfybatch.blocks.server import CONFIG_SOURCES, ComfyUIServer, ServerConfig, name_from_url
from comfybatch.errors import ConfigError
from comfybatch.problems import validation_line
from comfybatch.settings import Settings
from comfybatch.tasks.leases import api_url, prefect_client

_NOT_FOUND = 404
logger = logging.getLogger(__name__)
# (Prefect API, limit name) -> slots this process last saw or wrote: a fleet seen before is re-checked in the
# background rather than waited for.
_known_limits: dict[tuple[str, str], int] = {}
_background: set[asyncio.Task[None]] = set()


def configured_servers(settings: Settings) -> list[ServerConfig]:
    """Servers named by `comfybatch.toml` (`[[servers]]` tables) or, failing that, `COMFYUI_URLS`; plus the
    demo fleet `comfybatch up --demo` started (`COMFYBATCH_DEMO_URLS`).

    Raises:
        ConfigError naming the file and entry.
    """
    path = settings.config_file
    if path.is_file():
        try:
            entries = tomllib.loads(path.read_text(encoding="utf-8")).get("servers", [])
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
        servers = [_from_entry(entry, index, settings, path=str(path)) for index, entry in enumerate(entries, 1)]
    else:
        servers = [ServerConfig(name=name_from_url(url), url=url, slots=settings.default_slots, source="env")
                   for url in settings.comfyui_urls]  # fmt: skip
    named = {server.name for server in servers}
    return servers + [
        ServerConfig(name=name_from_url(url), url=url, slots=settings.default_slots, source="demo")
        for url in settings.demo_urls
        if name_from_url(url) not in named
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
            api_token=SecretStr(token) if token else None, source="toml", display_name=entry.get("display_name"),
        )  # fmt: skip
    except ValidationError as exc:
        raise ConfigError(f"{path}: [[servers]] entry {index}: {validation_line(exc)}") from None


async def sync_fleet(servers: Sequence[ServerConfig], *, saved: Sequence[ServerConfig] | None = None) -> None:
    """Save `servers` as blocks (those that changed) and create or update their concurrency limits."""
    await _save_blocks(servers, saved=await saved_servers() if saved is None else saved)
    await sync_limits(servers)


async def _save_blocks(servers: Sequence[ServerConfig], *, saved: Sequence[ServerConfig]) -> None:
    # Every write is a transaction on the Prefect server (SQLite by default): write only what changed.
    current = {server.name: server for server in saved}
    for server in servers:
        if current.get(server.name) != server:
            block = ComfyUIServer(url=server.url, api_token=server.api_token, slots=server.slots,
                                  labels=list(server.labels), source=server.source,
                                  display_name=server.display_name)  # fmt: skip
            await block.asave(server.name, overwrite=True)


def stale_servers(configured: Sequence[ServerConfig], saved: Sequence[ServerConfig]) -> list[str]:
    """Saved servers that `COMFYUI_URLS`, `comfybatch.toml` or the demo wrote and `configured` no longer names.

    Blocks made in the Prefect UI are never stale; `cli` blocks belong to the run that wrote them.
    """
    named = {server.name for server in configured}
    return sorted(s.name for s in saved if s.source in CONFIG_SOURCES - {"cli"} and s.name not in named)


def select_fleet(
    configured: Sequence[ServerConfig], saved: Sequence[ServerConfig], *, only: Sequence[str] = ()
) -> list[ServerConfig]:
    """The fleet, by name: the configured servers plus enabled blocks made in the Prefect UI; with `only`, just
    those servers, which may also be the `cli` blocks of a `comfybatch run --server`.

    A block another configuration wrote (an old `COMFYUI_URLS`, a stopped demo) is not part of it. A process with
    no configuration of its own (a dashboard or shell given only the Prefect URL) takes the configuration blocks
    as the configured processes last left them (`load_fleet` deletes the stale ones), `cli` ones excepted.

    Raises:
        ConfigError when `only` names a server outside the fleet.
    """
    fleet = fleet_now(configured, saved, only=only)
    if unknown := sorted(set(only) - set(fleet)):
        raise ConfigError(f"unknown server(s) {unknown}; the fleet has {sorted(fleet_now(configured, saved))}")
    return [fleet[name] for name in only] if only else [fleet[name] for name in sorted(fleet)]


def fleet_now(
    configured: Sequence[ServerConfig], saved: Sequence[ServerConfig], *, only: Sequence[str] = ()
) -> dict[str, ServerConfig]:
    """`select_fleet`'s servers by name, refusing nothing: with `only`, those of them that exist now (a running
    batch's fleet watch sees a named server go instead of failing)."""
    kept = {"ui"} if configured else {"ui", "env", "toml", "demo"}
    by_name = {server.name: server for server in saved if server.enabled and server.source in kept}
    by_name.update({server.name: server for server in configured})
    if not only:
        return by_name
    given = {s.name: s for s in saved if s.enabled and s.source == "cli" and s.name not in by_name}
    return {name: found for name in only if (found := by_name.get(name) or given.get(name)) is not None}


async def delete_servers(names: Sequence[str]) -> None:
    """Delete the `ComfyUI Server` blocks named `names` (their limits stay: a run may still hold a slot)."""
    if not names:
        return
    async with prefect_client() as client:
        documents = await client.read_block_documents_by_type(ComfyUIServer.get_block_type_slug())
        for document in documents:
            if document.name in names:
                with contextlib.suppress(ObjectNotFound):  # another process pruned it first
                    await client.delete_block_document(document.id)


@contextlib.asynccontextmanager
async def given_servers(urls: Sequence[str], settings: Settings) -> AsyncIterator[list[str]]:
    """`--server` URLs as one run's whole fleet: yields their names for `BatchSpec.servers`.

    Each is saved as a `cli` block for the run and deleted after it; a server made in the Prefect UI with the
    same URL is used as it is and kept.

    Raises:
        ConfigError when a server made in the Prefect UI has the name with another URL, or is disabled.
    """
    if not urls:
        yield []
        return
    saved = {server.name: server for server in await saved_servers()}
    wanted = [ServerConfig(name=name_from_url(url), url=url.rstrip("/"), slots=settings.default_slots, source="cli")
              for url in dict.fromkeys(urls)]  # fmt: skip
    for server in wanted:
        if (other := saved.get(server.name)) is not None and other.source == "ui":
            if other.url != server.url:
                raise ConfigError(f"--server {server.url}: the server {server.name!r} points at {other.url}")
            if not other.enabled:
                raise ConfigError(f"--server {server.url}: the server {server.name!r} is disabled in the Prefect UI")
    ours = [server for server in wanted if (other := saved.get(server.name)) is None or other.source != "ui"]
    await sync_fleet(ours, saved=list(saved.values()))
    await sync_limits(wanted)
    try:
        yield [server.name for server in wanted]
    finally:
        await delete_servers([server.name for server in ours])


async def sync_limits(servers: Sequence[ServerConfig]) -> None:
    """One global concurrency limit per server, `comfy:<name>`, sized to its slots (one read; writes only what
    differs)."""
    api = api_url()
    async with prefect_client() as client:
        limits = {limit.name: limit.limit for limit in await client.read_global_concurrency_limits(limit=200)}
        _known_limits.update({(api, name): slots for name, slots in limits.items()})
        for server in servers:
            if limits.get(server.limit_name) != server.slots:
                await client.upsert_global_concurrency_limit_by_name(server.limit_name, server.slots)
                _known_limits[api, server.limit_name] = server.slots


def _limits_known(servers: Sequence[ServerConfig]) -> bool:
    """Whether this process already saw every server's limit at its size (a fleet seen before)."""
    api = api_url()
    return all(_known_limits.get((api, server.limit_name)) == server.slots for server in servers)


async def _check_limits(servers: Sequence[ServerConfig]) -> None:
    try:
        await sync_limits(servers)
    except (httpx.HTTPError, OSError, ObjectAlreadyExists) as exc:  # the broker makes a missing limit on use
        logger.warning("concurrency limits not checked: %r", exc)


async def saved_servers(client: PrefectClient | None = None) -> list[ServerConfig]:
    """`ComfyUI Server` blocks, as configs (disabled ones included; callers filter)."""
    slug = ComfyUIServer.get_block_type_slug()
    async with contextlib.nullcontext(client) if client is not None else prefect_client() as prefect:
        try:
            documents = await prefect.read_block_documents_by_type(slug)
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code != _NOT_FOUND:
                raise
            # Unknown type: register it (a write, so only when needed), then nothing is saved yet.
            await ComfyUIServer.aregister_type_and_schema()
            return []
    return [_config(document.name, document.data) for document in documents if document.name]


def _config(name: str, data: dict[str, Any]) -> ServerConfig:
    if "source" not in data:
        # Saved before blocks carried a source: configuration named its blocks after the URL, people rarely do.
        data = {**data, "source": "env" if name == name_from_url(str(data.get("url", ""))) else "ui"}
    return ComfyUIServer.model_validate(data).config(name)


async def load_fleet(
    settings: Settings, *, only: Sequence[str] = (), writes_beside: bool = False
) -> list[ServerConfig]:
    """The fleet of `select_fleet`, after writing the configured servers to blocks and deleting the blocks an
    earlier configuration wrote (only where this process has a configuration: a bare shell deletes nothing).

    With `writes_beside` (a batch) those block writes run in the background: the batch's fleet is the configuration
    it just read, and the blocks only show it elsewhere. `background_settled` waits for them.

    Raises:
        ConfigError when the fleet is empty or `only` names an unknown server.
    """
    configured = configured_servers(settings)
    saved = await saved_servers()
    if configured:
        writes = _write_configuration(configured, saved)  # nothing to write for a fleet seen before
        if writes_beside:
            _in_background(writes)
        else:
            await writes
    fleet = select_fleet(configured, saved, only=only)
    if not fleet:
        raise ConfigError(
            "no ComfyUI servers configured: set COMFYUI_URLS=http://host:8188[,...], write comfybatch.toml, "
            "add a 'ComfyUI Server' block in the Prefect UI, or start the demo fleet (comfybatch demo)"
        )
    targets = list({server.name: server for server in [*configured, *fleet]}.values())
    if _limits_known(targets):
        # Seen before: check in the background (a limit deleted meanwhile is re-created by the broker on use).
        _in_background(_check_limits(targets))
    else:
        await sync_limits(targets)
    return fleet


async def background_settled(timeout_s: float = 10.0) -> None:
    """Wait (at most `timeout_s`) for this process's background fleet writes: a batch's last step, since its
    process may end right after."""
    if pending := list(_background):
        await asyncio.wait(pending, timeout=timeout_s)


def _in_background(writes: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(writes)
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _write_configuration(configured: Sequence[ServerConfig], saved: Sequence[ServerConfig]) -> None:
    try:
        await _save_blocks(configured, saved=saved)
        await delete_servers(stale_servers(configured, saved))
    except (httpx.HTTPError, OSError) as exc:  # the next load writes them again
        logger.warning("ComfyUI Server blocks not written: %r", exc)
