"""Illustrations for a children's picture book: one page per prompt, two candidates each, in one style.

    COMFYBATCH_URL=http://127.0.0.1:8600 COMFYBATCH_API_KEY=<key> python examples/picture_book.py [--tiny]

`--tiny` uses the demo checkpoint (`comfybatch demo`): noise at 64x64, in seconds, to try the round trip.
"""

import os
import sys

from comfybatch.client import ComfyBatchClient

PAGES = [
    "a little fox reading a book under an oak tree",
    "an owl with a lantern flying over a sleeping village",
    "a hedgehog and a rabbit sharing strawberries on a picnic blanket",
    "a bear cub looking at the stars from a wooden boat",
]
tiny = "--tiny" in sys.argv[1:]

with ComfyBatchClient(os.environ.get("COMFYBATCH_URL", "http://127.0.0.1:8600"),
                      os.environ.get("COMFYBATCH_API_KEY")) as client:  # fmt: skip
    # The template carries the book's style (watercolour, pastel) and negative prompt: prompts name only the scene.
    batch = client.submit_batch(
        PAGES, workflow="picture-book-tiny" if tiny else "picture-book-sd15", images_per_item=2, base_seed=1234
    )
    print(f"batch {batch.name}: {batch.links.prefect_ui or batch.batch_id}")
    for event in client.events(batch):  # live; survives dropped connections
        if event.type in ("item.done", "item.failed"):
            print(f"  {event.type:<11} {event.key} {event.payload.get('error') or ''}")
    status = client.wait_for_batch(batch)  # raises BatchFailed naming failed pages
    paths = client.download(batch, f"picture-book/{batch.name}")
    print(f"{status.counts.done} illustrations and the manifest in picture-book/{batch.name}/")
