"""The built-in rules of batch parameters (`width`, `steps`…), checked by `BatchSpec` and `expansion`.

The rule engine itself (`Rule`, `apply_rule`) is `comfy/rule.py`, which preflight shares; this module adds what
comfybatch knows about well-known parameters, so the request model can check them as soon as a request arrives,
with the same messages the expansion gives for sheet cells. Pure: no I/O, no settings.
"""

import math
from typing import Any

from comfybatch.comfy.rule import InvalidValue, Kind, Rule, apply_rule, control_character

# The engine's names beside the rules, so batch-level code (models, expansion, inputs, uploads) imports one module.
__all__ = [
    "BUILTIN_RULES", "MAX_PROMPT_CHARS", "MAX_RESOLUTION", "InvalidValue", "Kind", "Rule", "apply_rule",
    "control_character", "non_finite",
]  # fmt: skip

# ComfyUI nodes.py MAX_RESOLUTION; EmptyLatentImage batch_size and KSampler steps maxima (0.3.75).
MAX_RESOLUTION = 16384
# Longer than any prompt a CLIP encoder reads (77 tokens per chunk), and short enough that a request's
# prompts fit in the flow run's parameters.
MAX_PROMPT_CHARS = 10_000

# Always applied to these names; a server's /object_info adds its own rules after them.
BUILTIN_RULES: dict[str, Rule] = {
    "width": Rule("int", min=16, max=MAX_RESOLUTION, multiple_of=8),
    "height": Rule("int", min=16, max=MAX_RESOLUTION, multiple_of=8),
    "steps": Rule("int", min=1, max=10000),
    "cfg": Rule("float"),
    "seed": Rule("int", min=0),
    "denoise": Rule("float", min=0, max=1),
    "batch_size": Rule("int", min=1, max=4096),
    "prompt": Rule("str", non_empty=True, max_length=MAX_PROMPT_CHARS),
    "negative_prompt": Rule("str", max_length=MAX_PROMPT_CHARS),
    **{name: Rule("str") for name in ("sampler", "scheduler", "checkpoint")},
}


def non_finite(value: Any, where: str = "") -> str | None:
    """Where in `value` (JSON data) a NaN or an infinity sits, e.g. `"nodes[0].x = nan"`, or None.

    JSON has no such numbers; Python's parser accepts `NaN`, `Infinity` and `1e400` and Prefect cannot store them.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'the value'} = {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        place = f"{where}[{key}]" if isinstance(key, int) else f"{where}.{key}" if where else str(key)
        if found := non_finite(item, place):
            return found
    return None
