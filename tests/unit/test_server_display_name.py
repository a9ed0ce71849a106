"""A server's display name: from `comfybatch.toml` or its block, for people only (the name stays the key)."""

from pathlib import Path

from comfybatch.blocks.fleet import _config, configured_servers
from comfybatch.blocks.server import ComfyUIServer
from comfybatch.settings import Settings


def test_toml_display_name_reaches_the_config_and_its_block(tmp_path: Path) -> None:
    """`display_name = "GPU A"` is kept beside the name taken from the URL, and survives a save as a block."""
    config = tmp_path / "comfybatch.toml"
    config.write_text('[[servers]]\nurl = "http://127.0.0.1:36453"\ndisplay_name = "GPU A (left rack)"\n')

    (server,) = configured_servers(Settings(config_file=config))
    block = ComfyUIServer(url=server.url, slots=server.slots, source=server.source, display_name=server.display_name)

    assert (server.name, server.display_name) == ("127-0-0-1-36453", "GPU A (left rack)")
    assert _config(server.name, block.model_dump()) == server


def test_block_saved_before_display_names_reads_none() -> None:
    """A block written without the field (an older comfybatch, the Prefect UI left it empty) has no display name."""
    server = _config("gpu-a", {"url": "http://gpu-a:8188", "slots": 2, "source": "ui"})
    emptied = _config("gpu-b", {"url": "http://gpu-b:8188", "source": "ui", "display_name": ""})

    assert (server.display_name, emptied.display_name) == (None, None)
