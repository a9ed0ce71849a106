"""The `comfybatch` command line: each command is one async function."""

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow
from comfybatch.comfy.workflow import ApiWorkflow, load_workflow
from comfybatch.errors import ComfyBatchError, ConfigError, WorkflowRejected

app = App(name="comfybatch", help="Turn ComfyUI servers into a batch image factory.")

DEMO_WORKFLOW = Path(__file__).parent / "templates" / "txt2img-tiny.json"


async def _object_info(server: str | None, object_info: Path | None) -> ObjectInfo:
    if object_info is not None:
        return ObjectInfo.from_json(_read(object_info))
    if server is None:
        raise ConfigError("give --server URL (a running ComfyUI) or --object-info FILE (a saved /object_info)")
    async with ComfyClient(server) as comfy:
        return await comfy.get_object_info()


def _read(path: Path) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    return path.read_bytes()


@app.command
async def convert(
    workflow: Path,
    *,
    server: str | None = None,
    object_info: Path | None = None,
    output: Annotated[Path | None, Parameter(name=["--output", "-o"])] = None,
) -> int:
    """Convert a UI-format workflow (as saved by ComfyUI) to API format.

    Args:
        workflow: UI- or API-format workflow JSON.
        server: ComfyUI URL whose /object_info drives the conversion.
        object_info: A saved /object_info JSON file, instead of --server.
        output: Where to write the API-format JSON (stdout when omitted).
    """
    info = await _object_info(server, object_info)
    converted = load_workflow(_read(workflow), info)
    text = json.dumps(converted.nodes, indent=2, ensure_ascii=False) + "\n"
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text, encoding="utf-8")
        print(f"wrote {output} ({len(converted.nodes)} nodes)", file=sys.stderr)
    return 0


@app.command
async def validate(workflow: Path, *, server: str | None = None, object_info: Path | None = None) -> int:
    """Report what a server would reject in a workflow, without queueing anything.

    Args:
        workflow: UI- or API-format workflow JSON.
        server: ComfyUI URL to validate against.
        object_info: A saved /object_info JSON file, instead of --server.
    """
    info = await _object_info(server, object_info)
    graph = load_workflow(_read(workflow), info)
    if problems := check_workflow(graph, info):
        raise WorkflowRejected(f"{workflow}: {len(problems)} problem(s)", problems=tuple(problems))
    print(f"{workflow}: OK ({len(graph.nodes)} nodes)")
    return 0


@app.command
async def demo(
    *,
    server: str | None = None,
    prompt: str = "a lighthouse on a cliff at dawn, watercolor",
    seed: int = 1,
    out: Path = Path("out/demo"),
) -> int:
    """Render one image with the tiny demo checkpoint on a local CPU ComfyUI (or --server).

    Args:
        server: An existing ComfyUI with the tiny checkpoint; a local demo server is started when omitted.
        prompt: The positive prompt.
        seed: The sampler seed.
        out: Folder for the downloaded image.
    """
    if server is not None:
        return await _render_demo(server, prompt, seed, out)
    from comfybatch.testing.fleet import LocalFleet  # heavy: only for the local demo

    print("starting a local CPU ComfyUI (first run installs it, a few minutes)...", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="comfybatch-demo-") as root, LocalFleet(Path(root), count=1) as fleet:
        return await _render_demo(fleet.servers[0].url, prompt, seed, out)


async def _render_demo(server: str, prompt: str, seed: int, out: Path) -> int:
    template = ApiWorkflow.from_json(DEMO_WORKFLOW.read_text(encoding="utf-8"))
    workflow = template.bind({"prompt": prompt, "seed": seed, "filename_prefix": "comfybatch/demo/demo"})
    async with ComfyClient(server) as comfy:
        if problems := check_workflow(workflow, await comfy.get_object_info()):
            raise WorkflowRejected(f"the demo workflow does not fit {server}", problems=tuple(problems))
        result = await comfy.run(workflow)
        for output in result.outputs:
            saved = await comfy.download(output, out / output.filename)
            print(f"{saved.path}  ({saved.size_bytes} bytes, prompt {result.prompt_id} on {comfy.name})")
    return 0


def main() -> None:
    """Entry point: our errors become one clear line and exit 2, never a traceback."""
    try:
        code = app(result_action="return_value")
    except ComfyBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: name the bug, hide the traceback
        print(f"internal error: {exc!r} (please report it)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
