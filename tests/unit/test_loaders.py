"""Which model files a graph loads: the keys warm-model routing compares between a job and a server."""

import json

from comfybatch.comfy.loaders import loaded_models
from comfybatch.comfy.workflow import ApiWorkflow
from tests.conftest import FIXTURES


def test_loader_nodes_name_their_files_and_links_are_skipped() -> None:
    """Checkpoint, LoRA, VAE and upscaler names are found by node class; a linked input names no file."""
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
        "2": {"class_type": "LoraLoader", "inputs": {"lora_name": "style.safetensors", "model": ["1", 0],
                                                     "clip": ["1", 1], "strength_model": 1.0, "strength_clip": 1.0}},
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "vae.pt"}},
        "4": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": ["9", 0]}},
        "5": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}},
    }  # fmt: skip
    assert loaded_models(ApiWorkflow(graph)) == {
        "CheckpointLoaderSimple:a.safetensors", "LoraLoader:style.safetensors", "VAELoader:vae.pt",
    }  # fmt: skip


def test_the_tiny_txt2img_graph_loads_its_checkpoint() -> None:
    graph = json.loads((FIXTURES / "api" / "txt2img_tiny.json").read_text())
    assert loaded_models(ApiWorkflow(graph)) == {"CheckpointLoaderSimple:comfybatch-tiny-sd15.safetensors"}
