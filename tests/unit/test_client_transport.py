"""Protocol corners a real ComfyUI cannot be made to produce (proxies, broken bodies, newer servers)."""

from collections.abc import Callable

import httpx
import pytest

from comfybatch.comfy.client import ComfyClient, new_prompt_id
from comfybatch.comfy.intake import load_workflow
from comfybatch.comfy.protocol import OutputFile
from comfybatch.errors import ConfigError, DownloadError, ServerProtocolError, ServerUnavailable, WorkflowRejected
from tests.support import graphs

pytestmark = pytest.mark.anyio
WORKFLOW = load_workflow(graphs.solid("tests/mock"))


def _client(handler: Callable[[httpx.Request], httpx.Response]) -> ComfyClient:
    return ComfyClient("http://gpu-a:8188", name="gpu-a", transport=httpx.MockTransport(handler))


async def test_queue_prompt_proxy_502_is_server_unavailable() -> None:
    """A proxy's 502 (ComfyUI never sends one) means the server is unavailable: fail over."""
    async with _client(lambda request: httpx.Response(502, text="Bad Gateway")) as comfy:
        with pytest.raises(ServerUnavailable) as caught:
            await comfy.queue_prompt(WORKFLOW, prompt_id=new_prompt_id(), client_id="c")

    assert caught.value.failover
    assert caught.value.retryable


async def test_queue_prompt_non_json_200_is_protocol_error() -> None:
    """A truncated or HTML body on 200 is a protocol error, not a crash."""
    async with _client(lambda request: httpx.Response(200, text="<html>oops")) as comfy:
        with pytest.raises(ServerProtocolError, match="non-JSON"):
            await comfy.queue_prompt(WORKFLOW, prompt_id=new_prompt_id(), client_id="c")


async def test_queue_prompt_invalid_prompt_id_from_newer_server_is_rejected() -> None:
    """Newer ComfyUI's 400 invalid_prompt_id is reported as a workflow rejection with its details."""
    body = {"error": {"type": "invalid_prompt_id", "message": "Invalid prompt_id", "details": "must be a UUID"},
            "node_errors": {}}  # fmt: skip
    async with _client(lambda request: httpx.Response(400, json=body)) as comfy:
        with pytest.raises(WorkflowRejected, match="must be a UUID"):
            await comfy.queue_prompt(WORKFLOW, prompt_id="not-a-uuid", client_id="c")


async def test_unauthorized_is_config_error_without_the_key() -> None:
    """401 from an authenticating proxy is a configuration error that never echoes the key."""
    async with ComfyClient("http://gpu-a", api_key="s3cret-token",
                           transport=httpx.MockTransport(lambda r: httpx.Response(401))) as comfy:  # fmt: skip
        with pytest.raises(ConfigError) as caught:
            await comfy.get_system_stats()

    assert "s3cret-token" not in str(caught.value)


async def test_api_key_is_sent_as_bearer_token() -> None:
    """The server's API key goes in the Authorization header."""
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"system": {"comfyui_version": "0.3.75"}, "devices": []})

    async with ComfyClient("http://gpu-a", api_key="tok", transport=httpx.MockTransport(handler)) as comfy:
        await comfy.get_system_stats()

    assert seen == ["Bearer tok"]


async def test_get_retries_a_transient_503() -> None:
    """An idempotent GET retries a transient 5xx before giving up."""
    answers = iter([httpx.Response(503), httpx.Response(200, json={"queue_running": [], "queue_pending": []})])
    async with _client(lambda request: next(answers)) as comfy:
        queue = await comfy.get_queue()

    assert queue.depth == 0


async def test_queue_pending_is_sorted_by_priority() -> None:
    """`queue_pending` is the server's raw heap; we order it by number."""
    raw = {"queue_running": [[5, "r", {}, {}, []]], "queue_pending": [[9, "c", {}, {}, []], [-3, "a", {}, {}, []],
                                                                      [7, "b", {}, {}, []]]}  # fmt: skip
    async with _client(lambda request: httpx.Response(200, json=raw)) as comfy:
        queue = await comfy.get_queue()

    assert [item.prompt_id for item in queue.pending] == ["a", "b", "c"]
    assert queue.position("r") == "running"


async def test_download_404_is_download_error_and_leaves_no_file(tmp_path) -> None:
    """A failed /view leaves neither the file nor a partial behind."""
    async with _client(lambda request: httpx.Response(404)) as comfy:
        with pytest.raises(DownloadError):
            await comfy.download(OutputFile(node_id="3", filename="x.png"), tmp_path / "x.png")

    assert list(tmp_path.iterdir()) == []


async def test_history_of_unfinished_prompt_is_none() -> None:
    """`{}` from /history/{id} means unknown or unfinished."""
    async with _client(lambda request: httpx.Response(200, json={})) as comfy:
        assert await comfy.get_history(new_prompt_id()) is None
