"""Blocks carry their source: a reconfigured platform forgets the servers of its earlier configuration."""

import asyncio
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import BlockDocumentUpdate
from prefect.settings import PREFECT_API_URL, temporary_settings

from comfybatch.blocks import fleet as fleet_module
from comfybatch.blocks.fleet import background_settled, load_fleet, saved_servers
from comfybatch.blocks.server import ComfyUIServer, ServerConfig
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings
from comfybatch.tasks.dispatch import SlotBroker
from tests.flows.conftest import PREFECT_SOCKETS

pytestmark = [pytest.mark.anyio, PREFECT_SOCKETS, pytest.mark.timeout(120)]


@pytest.fixture
def prefect_api(platform_prefect: LocalPrefectServer) -> Iterator[str]:
    with temporary_settings(updates={PREFECT_API_URL: platform_prefect.api_url}):
        yield platform_prefect.api_url


async def test_load_fleet_after_reconfiguration_keeps_ui_blocks_only(prefect_api: str, tmp_path: Path) -> None:
    """After COMFYUI_URLS changes and the demo stops, the old env and demo blocks are deleted; a block made in
    the Prefect UI stays in the fleet, and a `cli` block an interrupted run left is saved but not in the fleet."""
    absent = tmp_path / "absent.toml"
    await load_fleet(Settings(comfyui_urls="http://127.0.0.1:1", demo_urls="http://127.0.0.1:2", config_file=absent))
    await ComfyUIServer(url="http://studio:8188").asave("studio", overwrite=True)
    await ComfyUIServer(url="http://127.0.0.1:3", source="cli").asave("127-0-0-1-3", overwrite=True)

    fleet = await load_fleet(Settings(comfyui_urls="http://127.0.0.1:4", config_file=absent))

    assert [(server.name, server.source) for server in fleet] == [("127-0-0-1-4", "env"), ("studio", "ui")]
    assert sorted((server.name, server.source) for server in await saved_servers()) == [
        ("127-0-0-1-3", "cli"), ("127-0-0-1-4", "env"), ("studio", "ui"),
    ]  # fmt: skip


async def test_blocks_saved_before_sources_count_as_configuration_when_named_after_their_url(
    prefect_api: str, tmp_path: Path
) -> None:
    """A block without a source named after its URL (what COMFYUI_URLS and --server wrote) is deleted on the next
    load; one with a name a person chose stays in the fleet."""
    for name, url in (("127-0-0-1-5", "http://127.0.0.1:5"), ("render-box", "http://127.0.0.1:6")):
        block = ComfyUIServer(url=url)
        document_id = await block.asave(name, overwrite=True)
        async with get_client() as client:
            document = await client.read_block_document(document_id)
            data = {key: value for key, value in document.data.items() if key != "source"}
            await client.update_block_document(document_id, BlockDocumentUpdate(data=data, merge_existing_data=False))

    fleet = await load_fleet(Settings(comfyui_urls="http://127.0.0.1:7", config_file=tmp_path / "absent.toml"))

    names = [server.name for server in fleet]
    assert "render-box" in names
    assert "127-0-0-1-5" not in names
    assert "127-0-0-1-5" not in {server.name for server in await saved_servers()}


async def test_a_limit_deleted_after_the_fleet_was_seen_is_made_again_by_the_first_lease(
    prefect_api: str, tmp_path: Path
) -> None:
    """A second load of a fleet this process has seen returns without waiting for its limit check; a limit
    deleted behind its back meanwhile is re-created when the first job asks for a slot, and the slot is granted."""
    settings = Settings(comfyui_urls="http://127.0.0.1:8", config_file=tmp_path / "absent.toml")
    await load_fleet(settings)
    async with get_client() as client:
        await client.delete_global_concurrency_limit_by_name("comfy:127-0-0-1-8")

    fleet = await load_fleet(settings)
    async with SlotBroker(fleet) as broker, broker.slot([fleet[0].name], deadline_s=5.0) as slot:
        assert slot.server.name == "127-0-0-1-8"
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name("comfy:127-0-0-1-8")
        assert (limit.limit, limit.active_slots) == (fleet[0].slots, 1)


async def test_a_batch_s_block_writes_run_beside_it_and_are_settled_before_it_ends(
    prefect_api: str, tmp_path: Path
) -> None:
    """`writes_beside` (a batch's load) gives the configured fleet at once; `background_settled`, the batch's last
    step, returns only once the configured servers are saved as blocks."""
    settings = Settings(comfyui_urls="http://127.0.0.1:9", config_file=tmp_path / "absent.toml")
    written = asyncio.Event()
    real_save = fleet_module._save_blocks

    async def slow_save(servers: Sequence[ServerConfig], *, saved: Sequence[ServerConfig]) -> None:
        await asyncio.sleep(0.5)  # a Prefect server busy writing: the load must not wait for it
        await real_save(servers, saved=saved)
        written.set()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fleet_module, "_save_blocks", slow_save)
        fleet = await load_fleet(settings, writes_beside=True)
        assert "127-0-0-1-9" in [server.name for server in fleet]  # beside blocks other tests made in the UI
        assert not written.is_set()
        await background_settled()
    assert written.is_set()
    assert "127-0-0-1-9" in {server.name for server in await saved_servers()}
