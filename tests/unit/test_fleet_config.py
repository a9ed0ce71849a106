"""Fleet configuration: comfybatch.toml, COMFYUI_URLS, and the names they give servers."""

from pathlib import Path

import pytest

from comfybatch.blocks.fleet import configured_servers, fleet_now, select_fleet, stale_servers
from comfybatch.blocks.server import ServerConfig, ServerSource, name_from_url
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


def _server(name: str, source: ServerSource, *, enabled: bool = True) -> ServerConfig:
    return ServerConfig(name=name, url=f"http://{name}:8188", source=source, enabled=enabled)


def test_configured_servers_carry_their_source(tmp_path: Path) -> None:
    """COMFYUI_URLS servers are `env`, `up --demo`'s are `demo`, and [[servers]] tables are `toml`."""
    from_env = Settings(comfyui_urls="http://a:1", demo_urls="http://127.0.0.1:9", config_file=tmp_path / "no.toml")
    config = tmp_path / "comfybatch.toml"
    config.write_text('[[servers]]\nurl = "http://gpu-a:8188"\n')

    assert [(s.name, s.source) for s in configured_servers(from_env)] == [("a-1", "env"), ("127-0-0-1-9", "demo")]
    assert [s.source for s in configured_servers(Settings(config_file=config))] == ["toml"]


def test_stale_servers_are_config_blocks_the_configuration_no_longer_names() -> None:
    """Old demo, env and toml blocks are stale; UI blocks never are, nor `cli` blocks (their run deletes them)."""
    configured = [_server("gpu-a", "env")]
    saved = [_server("gpu-a", "env"), _server("old-demo", "demo"), _server("old-env", "env"),
             _server("old-toml", "toml"), _server("mine", "ui"), _server("run-b", "cli")]  # fmt: skip

    assert stale_servers(configured, saved) == ["old-demo", "old-env", "old-toml"]


def test_select_fleet_is_configured_plus_enabled_ui_blocks() -> None:
    """The fleet leaves out blocks of an earlier configuration, `cli` blocks and disabled UI blocks."""
    configured = [_server("gpu-a", "env")]
    saved = [_server("old-demo", "demo"), _server("mine", "ui"), _server("off", "ui", enabled=False),
             _server("run-b", "cli")]  # fmt: skip

    assert [s.name for s in select_fleet(configured, saved)] == ["gpu-a", "mine"]


def test_select_fleet_only_means_only_those_servers() -> None:
    """`only` (BatchSpec.servers, `run --server`) gives just those servers, a run's `cli` block included."""
    configured = [_server("gpu-a", "env")]
    saved = [_server("mine", "ui"), _server("run-b", "cli")]

    assert [s.name for s in select_fleet(configured, saved, only=["run-b"])] == ["run-b"]
    assert [s.name for s in select_fleet(configured, saved, only=["mine", "gpu-a"])] == ["mine", "gpu-a"]


def test_select_fleet_refuses_a_server_of_an_earlier_configuration() -> None:
    """Naming an old demo server is refused, naming the fleet that exists."""
    with pytest.raises(ConfigError, match=r"unknown server\(s\) \['old-demo'\]; the fleet has \['gpu-a'\]"):
        select_fleet([_server("gpu-a", "env")], [_server("old-demo", "demo")], only=["old-demo"])


def test_select_fleet_without_a_configuration_takes_the_saved_configuration_blocks() -> None:
    """A dashboard given only the Prefect URL lists the env, toml and demo blocks the platform saved, never `cli`."""
    saved = [_server("gpu-a", "env"), _server("demo-0", "demo"), _server("mine", "ui"), _server("run-b", "cli")]

    assert [s.name for s in select_fleet([], saved)] == ["demo-0", "gpu-a", "mine"]


def test_fleet_now_keeps_a_runs_cli_servers_and_drops_a_named_server_that_went() -> None:
    """A running batch's fleet watch, given `only`: the run's own `cli` block stays in its fleet (it is no server
    leaving), and a named server whose block was deleted is absent rather than an error."""
    configured = [_server("gpu-a", "env")]
    saved = [_server("run-b", "cli"), _server("mine", "ui")]

    assert list(fleet_now(configured, saved, only=["run-b"])) == ["run-b"]
    assert list(fleet_now(configured, saved, only=["mine", "gone"])) == ["mine"]
