"""Product photos re-staged: a folder of product cutouts (PNGs with transparency), each put on new backgrounds.

    COMFYBATCH_URL=http://127.0.0.1:8600 COMFYBATCH_API_KEY=<key> python examples/product_photos.py [--tiny] [DIR]

Each photo in DIR (default: `photos/`, filled with three drawn products when it does not exist) is one item, shown
in every scene below; the SDK uploads the files first. Transparent pixels are repainted and the product's own
pixels are kept exactly (`restage-sd15`; `--tiny`: the demo checkpoint of `comfybatch demo`, noise, in seconds).
"""

import os
import sys
from pathlib import Path

from PIL import Image, ImageDraw

from comfybatch.client import ComfyBatchClient

SCENES = [
    "on a rustic wooden table, soft morning window light, shallow depth of field",
    "on polished white marble, bright studio light, minimal",
]
PRODUCTS = {"mug": (196, 64, 52), "vase": (40, 110, 170), "candle": (230, 200, 120)}  # drawn when DIR is absent


def draw_products(folder: Path, size: int) -> None:
    """Stand-ins for real cutouts: a coloured shape on a transparent background."""
    folder.mkdir(parents=True)
    for name, colour in PRODUCTS.items():
        photo = Image.new("RGBA", (size, size), (0, 0, 0, 0))
        ImageDraw.Draw(photo).ellipse((size // 4, size // 8, 3 * size // 4, 7 * size // 8), fill=(*colour, 255))
        photo.save(folder / f"{name}.png")


args = [arg for arg in sys.argv[1:] if arg != "--tiny"]
tiny = "--tiny" in sys.argv[1:]
photos = Path(args[0] if args else "photos")
if not photos.exists():
    draw_products(photos, 64 if tiny else 512)
files = sorted(path for path in photos.iterdir() if path.suffix.lower() in {".png", ".webp"})

with ComfyBatchClient(os.environ.get("COMFYBATCH_URL", "http://127.0.0.1:8600"),
                      os.environ.get("COMFYBATCH_API_KEY")) as client:  # fmt: skip
    batch = client.submit_batch(SCENES, images=files, workflow="restage-tiny" if tiny else "restage-sd15")
    print(f"{len(files)} photos x {len(SCENES)} scenes: batch {batch.name}")
    status = client.wait_for_batch(batch, timeout=3600)
    paths = client.download(batch, Path("product-photos") / batch.name)
    print(f"{status.counts.done} re-staged photos: {paths[0].parent}")
