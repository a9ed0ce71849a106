"""The `ComfyUI Server` block (fleet config and secrets, editable in the Prefect UI)."""

import re
from typing import Literal

from prefect.blocks.core import Block
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from comfybatch.slug import name_slug

SERVER_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"

ServerSource = Literal["ui", "env", "toml", "cli", "demo"]
# Sources whose blocks last only as long as the configuration that wrote them names them.
CONFIG_SOURCES: frozenset[ServerSource] = frozenset({"env", "toml", "cli", "demo"})


def limit_name(server: str) -> str:
    """The Prefect global concurrency limit guarding one server."""
    return f"comfy:{server}"


def name_from_url(url: str) -> str:
    """A stable server name for a bare URL: `http://gpu-a:8188` -> `gpu-a-8188`."""
    netloc = re.sub(r"^[a-z]+://", "", url.lower()).split("/", 1)[0]
    return name_slug(netloc, fallback="comfyui")


class ServerConfig(BaseModel):
    """A resolved, frozen server description: what tasks receive (never a block or a client).

    `blocks.connection` connects to it, so this config model does not import the ComfyUI client.
    """

    model_config = ConfigDict(frozen=True)

    name: str = Field(pattern=SERVER_NAME_PATTERN)
    url: str
    slots: int = Field(2, ge=1, le=8)
    labels: tuple[str, ...] = ()
    api_token: SecretStr | None = None
    enabled: bool = True
    source: ServerSource = "ui"
    display_name: str | None = Field(None, max_length=60)  # what people read; `name` stays the key and limit

    @property
    def limit_name(self) -> str:
        return limit_name(self.name)


class ComfyUIServer(Block):
    """A ComfyUI server comfybatch may send jobs to. The block's name is the server's name.

    Example:
        await ComfyUIServer(url="http://gpu-a:8188", slots=2).asave("gpu-a", overwrite=True)
    """

    _block_type_name = "ComfyUI Server"
    _block_type_slug = "comfybatch-comfyui-server"
    _description = "A ComfyUI server in the comfybatch fleet; its name is used in the 'comfy:<name>' limit."

    url: str = Field(description="Base URL, e.g. http://gpu-a:8188")
    api_token: SecretStr | None = Field(None, description="Bearer token for a proxy in front of ComfyUI.")
    slots: int = Field(2, ge=1, le=8, description="Prompts in flight at once: 1 running, the rest queued behind.")
    enabled: bool = Field(True, description="Disabled servers get no new jobs.")
    labels: list[str] = Field(default_factory=list, description="Free tags, e.g. models it holds ('sdxl').")
    source: ServerSource = Field(
        "ui", description="Who made it: ui (here, in the Prefect UI: always kept); env (COMFYUI_URLS), toml "
        "(comfybatch.toml), demo (comfybatch up --demo): deleted once that configuration no longer names it; "
        "cli (comfybatch run --server): only for that run.",
    )  # fmt: skip
    display_name: str | None = Field(
        None, max_length=60, description="The name people read on the dashboard (e.g. 'GPU A'); empty: the block's."
    )

    def config(self, name: str) -> ServerConfig:
        return ServerConfig(name=name, url=self.url.rstrip("/"), slots=self.slots, labels=tuple(self.labels),
                            api_token=self.api_token, enabled=self.enabled, source=self.source,
                            display_name=self.display_name or None)  # fmt: skip
