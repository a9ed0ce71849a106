"""Fleet configuration: comfybatch.toml, COMFYUI_URLS, and the names they give servers."""

from pathlib import Path

import pytest

from comfybatch.blocks.fleet import configured_servers
from comfybatch.blocks.server import name_from_url
from comfybatch.errors import ConfigError
from comfybatch.settings import Settings


def test_configured_servers_from_comma_separated_urls(tmp_path: Path) -> None:
    """COMFYUI_URLS becomes one server per URL, named after host and port, with the default slots."""
    settings = Settings(comfyui_urls="http://gpu-a:8188/, http://10.0.0.7:8189", config_file=tmp_path / "none.toml")

    servers = configured_servers(settings)

    assert [(s.name, s.url, s.slots) for s in servers] == [
        ("gpu-a-8188", "http://gpu-a:8188", 2),
        ("10-0-0-7-8189", "http://10.0.0.7:8189", 2),
    ]


def test_configured_servers_from_toml_reads_token_from_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A [[servers]] table gives name, slots and labels; the token comes from the named variable, never the file."""
    monkeypatch.setenv("GPU_A_TOKEN", "s3cret")
    config = tmp_path / "comfybatch.toml"
    config.write_text('[[servers]]\nname = "gpu-a"\nurl = "http://gpu-a:8188"\nslots = 3\nlabels = ["sdxl"]\n'
                      'api_token_env = "GPU_A_TOKEN"\n')  # fmt: skip

    (server,) = configured_servers(Settings(config_file=config))

    assert (server.name, server.slots, server.labels) == ("gpu-a", 3, ("sdxl",))
    assert server.api_token is not None
    assert server.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(server)


def test_configured_servers_bad_toml_names_the_entry(tmp_path: Path) -> None:
    """An entry with too many slots is refused, naming the file, the entry and the field."""
    config = tmp_path / "comfybatch.toml"
    config.write_text('[[servers]]\nurl = "http://a:1"\n\n[[servers]]\nurl = "http://b:1"\nslots = 99\n')

    with pytest.raises(ConfigError, match=r"entry 2: slots"):
        configured_servers(Settings(config_file=config))


def test_name_from_url_is_a_valid_block_name() -> None:
    """URLs with schemes, paths and odd characters become lowercase dash-separated names."""
    assert name_from_url("HTTPS://GPU_B.example:443/comfy/") == "gpu-b-example-443"
