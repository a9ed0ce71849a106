"""Warm-model routing against least-loaded routing: model loads and makespan on a batch alternating checkpoints.

    .venv/bin/python bench/models.py [--images 24] [--steps 12]

Two local ComfyUI servers (CPU), each with the tiny checkpoint under two names (to ComfyUI, two models); one
batch whose jobs alternate A, B, A, B… run once with `COMFYBATCH_WARM_ROUTING=false` and once with it on, each
on freshly started servers (empty caches, logs counted from zero). Prints figures; see `bench/README.md`.
"""

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

from comfybatch.blocks.server import name_from_url
from comfybatch.flows.batch import generate_batch
from comfybatch.local.fleet import LocalFleet
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec, Sweep
from comfybatch.settings import get_settings
from comfybatch.testing.warm import add_checkpoint_names, checkpoint_loads

GRAPH = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "api" / "txt2img_tiny.json"
MODELS = ["bench-a.ckpt", "bench-b.ckpt"]


def alternating_spec(name: str, servers: list[str], *, images: int, steps: int) -> BatchSpec:
    graph = json.loads(GRAPH.read_text())
    graph["5"]["inputs"]["steps"] = steps
    return BatchSpec(
        name=name, workflow=graph, servers=servers,
        bindings={"ckpt": "1.inputs.ckpt_name", "seed": "5.inputs.seed", "prompt": "2.inputs.text"},
        sweep=Sweep(zipped=[{"ckpt": [MODELS[index % 2] for index in range(images)],
                             "seed": list(range(1, images + 1)), "prompt": ["a cat"] * images}]),
    )  # fmt: skip


def run_mode(root: Path, prefect_url: str, *, routing: bool, images: int, steps: int) -> tuple[list[int], float]:
    """Loads per server and the batch's makespan (call to return), on two fresh servers."""
    fleet = LocalFleet(root / f"comfy-{routing}", names=["bench-0", "bench-1"])
    assert fleet.checkpoint is not None
    for server in fleet.servers:
        add_checkpoint_names(server, fleet.checkpoint, MODELS)
    with fleet:
        os.environ.update({
            "COMFYUI_URLS": ",".join(server.url for server in fleet.servers),
            "COMFYBATCH_OUTPUT_ROOT": str(root / "out"), "COMFYBATCH_CONFIG_FILE": str(root / "absent.toml"),
            "COMFYBATCH_WARM_ROUTING": str(routing).lower(),
        })  # fmt: skip
        get_settings.cache_clear()
        names = [name_from_url(server.url) for server in fleet.servers]
        spec = alternating_spec(f"models-{'warm' if routing else 'least-loaded'}", names, images=images, steps=steps)
        with temporary_settings(updates={PREFECT_API_URL: prefect_url, PREFECT_HOME: str(root / "prefect-client")}):
            started = time.monotonic()
            report = asyncio.run(generate_batch(spec))
            makespan = time.monotonic() - started
        if report.done != images:
            raise SystemExit(f"only {report.done} of {images} images rendered")
        return [checkpoint_loads(server) for server in fleet.servers], makespan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="comfybatch-bench-models-") as tmp:
        root = Path(tmp)
        prefect = LocalPrefectServer(root / "prefect")
        prefect.start()
        try:
            modes = (("least-loaded (routing off)", False), ("warm-model routing", True))
            rows = [(label, *run_mode(root, prefect.api_url, routing=routing, images=args.images, steps=args.steps))
                    for label, routing in modes]  # fmt: skip
        finally:
            prefect.stop()
    print(f"\n{args.images} images alternating 2 checkpoints over 2 servers (tiny SD1.5, CPU, {args.steps} steps)")
    print(f"{'routing':<28} {'loads per server':>18} {'loads':>6} {'makespan [s]':>13}")
    for label, loads, makespan in rows:
        print(f"{label:<28} {' + '.join(map(str, loads)):>18} {sum(loads):>6} {makespan:>13.1f}")


if __name__ == "__main__":
    main()
