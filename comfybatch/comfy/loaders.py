"""Which model files a graph loads: the names its loader nodes bind (checkpoint, LoRA, VAE, upscaler…).

The broker routes a job to a server that loaded the same files last (warm-model routing): ComfyUI caches a
loader's output by node, so a prompt naming the same file again skips the load from disk.
"""

from comfybatch.comfy.workflow import ApiWorkflow

# class_type → the inputs that name a model file. Custom loaders follow the same `*_name` habit and are matched
# by it below; these are the core ones, named so a graph's swaps are counted even without that habit.
LOADER_INPUTS: dict[str, tuple[str, ...]] = {
    "CheckpointLoaderSimple": ("ckpt_name",),
    "CheckpointLoader": ("ckpt_name", "config_name"),
    "ImageOnlyCheckpointLoader": ("ckpt_name",),
    "unCLIPCheckpointLoader": ("ckpt_name",),
    "LoraLoader": ("lora_name",),
    "LoraLoaderModelOnly": ("lora_name",),
    "VAELoader": ("vae_name",),
    "UpscaleModelLoader": ("model_name",),
    "UNETLoader": ("unet_name",),
    "CLIPLoader": ("clip_name",),
    "DualCLIPLoader": ("clip_name1", "clip_name2"),
    "ControlNetLoader": ("control_net_name",),
    "CLIPVisionLoader": ("clip_name",),
    "StyleModelLoader": ("style_model_name",),
}
_NAME_SUFFIXES = ("ckpt_name", "lora_name", "vae_name", "unet_name", "model_name")


def loaded_models(workflow: ApiWorkflow) -> frozenset[str]:
    """`{"<class_type>:<file>"}` for every model file the graph's loader nodes name as a literal."""
    models: set[str] = set()
    for node in workflow.nodes.values():
        class_type, inputs = node.get("class_type"), node.get("inputs") or {}
        if not isinstance(class_type, str) or not isinstance(inputs, dict):
            continue
        names = LOADER_INPUTS.get(class_type)
        if names is None and "Loader" in class_type:
            names = tuple(key for key in inputs if key.endswith(_NAME_SUFFIXES))
        for key in names or ():
            if isinstance(value := inputs.get(key), str):  # a link (a list) is not a file name
                models.add(f"{class_type}:{value}")
    return frozenset(models)
