"""Social images at their exact sizes: every prompt as a square post, a story and a link preview.

    COMFYBATCH_URL=http://127.0.0.1:8600 COMFYBATCH_API_KEY=<key> python examples/social_posts.py [--tiny]

A zipped sweep advances its lists together: one job per size, times every prompt (2 x 3 = 6 images). SDXL renders
near one megapixel (`width`, `height`); the template's ImageScale crops and scales to `post_width` x `post_height`.
`--tiny` uses the demo checkpoint (`comfybatch demo`) at small sizes: noise, in seconds.
"""

import os
import sys

from comfybatch.client import ComfyBatchClient

PROMPTS = ["a lighthouse at dawn, cinematic", "a bowl of ramen, overhead shot"]
SIZES = {  # square 1080x1080, story 1080x1920, link 1200x630
    "width": [1024, 768, 1216], "height": [1024, 1344, 640],
    "post_width": [1080, 1080, 1200], "post_height": [1080, 1920, 630],
}  # fmt: skip
TINY_SIZES = {"width": [64, 64, 128], "height": [64, 112, 64],
              "post_width": [64, 63, 120], "post_height": [64, 112, 63]}  # fmt: skip
tiny = "--tiny" in sys.argv[1:]

with ComfyBatchClient(os.environ.get("COMFYBATCH_URL", "http://127.0.0.1:8600"),
                      os.environ.get("COMFYBATCH_API_KEY")) as client:  # fmt: skip
    batch = client.submit_batch(
        PROMPTS,
        workflow="social-post-tiny" if tiny else "social-post-sdxl",
        bindings={"post_width": "7.inputs.width", "post_height": "7.inputs.height"},  # the exact output size
        sweep={"zipped": [TINY_SIZES if tiny else SIZES]},
    )
    for event in client.events(batch):
        if event.type == "item.done":
            print(f"  done {event.key} on {event.payload.get('server')}")
    client.wait_for_batch(batch)
    for path in client.download(batch, f"social/{batch.name}"):
        print(path)
