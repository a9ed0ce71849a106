"""A batch in a process of its own, before a bench measures one: afterwards the Prefect server has seen the fleet
(its `ComfyUI Server` blocks and `comfy:<name>` limits), as on a platform that has run a batch before.

    .venv/bin/python bench/_first_batch.py IMAGES   (with COMFYUI_URLS, PREFECT_API_URL… set by `first_contact`)

Prints, as JSON, the set-up this first contact took (call -> first prompt queued), which includes the writes a
fleet not seen before needs.
"""

import asyncio
import json
import sys
import time
import uuid

from _common import NONCE_INPUT, delay_graph

from comfybatch.flows.batch import generate_batch
from comfybatch.models import BatchSpec, Sweep
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import get_settings


async def first_batch(images: int) -> float:
    run_id = uuid.uuid4().hex[:8]
    spec = BatchSpec(
        name=f"first-contact-{run_id}", workflow=delay_graph(0.0), bindings={"nonce": NONCE_INPUT},
        sweep=Sweep(axes={"nonce": [f"first-{run_id}-{index:05d}" for index in range(images)]}),
    )  # fmt: skip
    called_at = time.time()
    await generate_batch(spec)
    manifest = read_manifest(OutputStore(get_settings().output_root), spec.name)
    assert manifest is not None, "the first batch wrote no manifest"
    return float(manifest["queued_at"].min().timestamp()) - called_at


if __name__ == "__main__":
    print(json.dumps({"first_contact_setup_s": round(asyncio.run(first_batch(int(sys.argv[1]))), 3)}))
