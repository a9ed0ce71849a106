"""Probing only the node classes a batch uses, against a real ComfyUI."""

import pytest

from comfybatch.comfy.client import ComfyClient
from tests.conftest import FleetServer

pytestmark = pytest.mark.anyio


async def test_node_classes_are_described_as_in_the_full_object_info(comfy_server: FleetServer) -> None:
    """`get_node_classes` returns exactly the named classes the server has, each as `/object_info` describes it,
    and leaves out a class the server lacks."""
    wanted = ["ComfybatchDelay", "SaveImage", "NoSuchNodeClass"]
    async with ComfyClient(comfy_server.url) as comfy:
        some = await comfy.get_node_classes(wanted)
        full = await comfy.get_object_info(refresh=True)

    assert sorted(some) == ["ComfybatchDelay", "SaveImage"]
    assert some.node_class("ComfybatchDelay") == full.node_class("ComfybatchDelay")
    assert some.input_spec("SaveImage", "filename_prefix") == full.input_spec("SaveImage", "filename_prefix")
