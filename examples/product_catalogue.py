"""E-commerce packshots at 1024x1024: one product per sheet row, isolated on white, dry-run first.

    COMFYBATCH_URL=http://127.0.0.1:8600 COMFYBATCH_API_KEY=<key> python examples/product_catalogue.py [--tiny]

The sheet is an ordinary CSV (`label` names the files, `prompt` the product); the SDK uploads it.
`--tiny` uses the demo checkpoint (`comfybatch demo`) at 64x64: noise, in seconds.
"""

import csv
import os
import sys
from pathlib import Path
from typing import Any

from comfybatch.client import ComfyBatchClient

PRODUCTS = [
    ("mug-white", "a white ceramic coffee mug"),
    ("wallet-brown", "a brown leather bifold wallet"),
    ("sneaker-red", "a red canvas sneaker, side view"),
    ("lamp-brass", "a brass desk lamp"),
]
tiny = "--tiny" in sys.argv[1:]
size = 64 if tiny else 1024

sheet = Path("products.csv")
with sheet.open("w", newline="", encoding="utf-8") as file:
    csv.writer(file).writerows([("label", "prompt"), *PRODUCTS])

with ComfyBatchClient(os.environ.get("COMFYBATCH_URL", "http://127.0.0.1:8600"),
                      os.environ.get("COMFYBATCH_API_KEY")) as client:  # fmt: skip
    request: dict[str, Any] = {"sheet": sheet, "workflow": "product-on-white-tiny" if tiny else "product-on-white-sdxl",
               "width": size, "height": size, "images_per_item": 2}  # fmt: skip
    report = client.validate(**request)  # the fleet's dry run: no GPU time
    if not report.ok:
        sys.exit("\n".join([*report.plan, *(f"{bad.key}: {bad.error}" for bad in report.invalid)]))
    print(f"{report.total} images, about {report.estimate_s or 0:.0f} s")
    batch = client.submit_batch(**request)
    status = client.wait_for_batch(batch, timeout=3600)
    paths = client.download(batch, Path("catalogue") / batch.name)
    print(f"{status.counts.done} packshots: {paths[0].parent}")
