"""The `comfybatch` command line: each command is one async function."""

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter
from pydantic import ValidationError

from comfybatch.comfy.client import ComfyClient
from comfybatch.comfy.intake import detect_format, load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.deployments import commands as platform_commands
from comfybatch.errors import ComfyBatchError, ConfigError, WorkflowRejected
from comfybatch.models import BatchSpec, read_template
from comfybatch.problems import validation_text

app = App(name="comfybatch", help="Turn ComfyUI servers into a batch image factory.")


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
async def run(
    *,
    workflow: str,
    sheet: str | None = None,
    images: str | None = None,
    prompt: Annotated[list[str] | None, Parameter(name=["--prompt"], negative="")] = None,
    set_: Annotated[list[str] | None, Parameter(name=["--set"], negative="")] = None,
    server: Annotated[list[str] | None, Parameter(name=["--server"], negative="")] = None,
    bind: Annotated[list[str] | None, Parameter(name=["--bind"], negative="")] = None,
    out: str | None = None,
    name: str | None = None,
    images_per_item: int = 1,
    dry_run: bool = False,
    new_version: bool = False,
    webhook: str | None = None,
    webhook_items: bool = False,
) -> int:
    """Run a batch in this process: one image job per sheet row or prompt, on the fleet.

    Exit 0 only when every job succeeded. Running the same command again skips finished images.

    Args:
        workflow: Template name (see comfybatch/templates) or a UI-/API-format workflow JSON file.
        sheet: CSV, XLSX or Parquet: one job per row, columns named after parameters (an `image` column: input images).
        images: Folder or fsspec URL of input images: one item per image file, in name order.
        prompt: A prompt; repeat for more jobs.
        set_: name=value defaults for every job, e.g. --set steps=20 --set width=512.
        server: ComfyUI URL; repeat for more (default: COMFYUI_URLS or comfybatch.toml).
        bind: name=node.inputs.input, naming a parameter the workflow does not offer by itself.
        out: Output folder or fsspec URL (default: COMFYBATCH_OUTPUT_ROOT, else ./out).
        name: Batch name (default: from the workflow and sheet names, so reruns resume).
        images_per_item: Images per row or prompt (seeds increment).
        dry_run: Validate against every server and estimate; render nothing.
        new_version: When the name already holds another request, render into the folder NAME.v2 (.v3, …) instead.
        webhook: URL told batch.started and batch.finished by signed POSTs (secret: COMFYBATCH_WEBHOOK_SECRET).
        webhook_items: Also send item.done and item.failed to the webhook.
    """
    from comfybatch.blocks.fleet import given_servers
    from comfybatch.notify.webhooks import check_webhook
    from comfybatch.runner import default_name, parse_sets, run_with_progress
    from comfybatch.settings import get_settings

    spec = BatchSpec(
        name=name or default_name(workflow, sheet or images), workflow=workflow, sheet=sheet, prompts=prompt or [],
        images=_absolute(images) if images and "://" not in images else images,
        defaults=parse_sets(set_ or []), images_per_item=images_per_item, dry_run=dry_run, new_version=new_version,
        output=_absolute(out) if out and "://" not in out else out,  # the flow may run in another folder
        bindings={name: str(path) for name, path in parse_sets(bind or []).items()},
        webhook=webhook, webhook_items=webhook_items,
    )  # fmt: skip
    _check_request(spec)
    await check_webhook(spec, get_settings())
    # --server is the whole fleet of this run: its servers reach the flow as BatchSpec.servers, by name.
    async with given_servers(server or [], get_settings()) as names:
        _, code = await run_with_progress(spec.model_copy(update={"servers": names}) if names else spec)
    return code


def _check_request(spec: BatchSpec) -> None:
    """Refuse a bad workflow, sheet or value before Prefect or any server is contacted.

    A UI-format graph is converted with a server's `/object_info`, so its values are checked by the flow.

    Raises:
        ConfigError, WorkflowFormatError, BatchRequestError: naming the file, field, row or column.
    """
    from comfybatch.expansion import expand_batch

    data = read_template(spec.workflow)
    if detect_format(data) == "api":
        expand_batch(spec, ApiWorkflow(data))


DEMO_PROMPTS = (
    "a lighthouse on a cliff at dawn, watercolor",
    "a fox reading a book under a tree, picture-book style",
    "a red bicycle in front of a bakery, morning light",
    "a paper boat on a puddle after rain",
    "an owl in a lantern-lit library",
    "a snowy mountain village at night",
)


@app.command
async def demo(*, servers: int = 2, out: str = "out", name: str = "demo") -> int:
    """Render a 6-image demo batch with a tiny model on local CPU ComfyUI servers (no GPU needed).

    After `comfybatch up --demo` it runs through the platform's generate-batch deployment (visible in the
    Prefect UI); otherwise it starts servers and a Prefect server just for this run. Images, manifest and
    contact sheet land in OUT/NAME; running it again skips finished images.

    Args:
        servers: How many local ComfyUI servers a standalone run starts (about 1 GB of RAM each).
        out: Output folder.
        name: Batch name.
    """
    from comfybatch.deployments.commands import dashboard_link, platform_demo_target
    from comfybatch.deployments.platform import load_state

    output = _absolute(out)  # the served flow runs in another process and folder
    spec = BatchSpec(name=name, workflow="picture-book-tiny", prompts=list(DEMO_PROMPTS), output=output,
                     defaults={"steps": 2})  # fmt: skip
    if (target := platform_demo_target()) is not None:
        from comfybatch.runner import run_on_platform

        print(f"watch it fill in on the dashboard: {dashboard_link(load_state())}", file=sys.stderr)
        return await run_on_platform(spec, api_url=target[0])
    return await _standalone_demo(spec, servers)


def _absolute(path: str) -> str:
    return os.path.abspath(path)


async def _standalone_demo(spec: BatchSpec, servers: int) -> int:
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from comfybatch.blocks.fleet import given_servers
    from comfybatch.local.fleet import LocalFleet  # heavy: only for the local demo
    from comfybatch.local.prefect_server import LocalPrefectServer
    from comfybatch.runner import run_with_progress
    from comfybatch.settings import get_settings

    print(f"starting {servers} local CPU ComfyUI server(s) and Prefect (first run installs ComfyUI: a few minutes)",
          file=sys.stderr)  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="comfybatch-demo-") as root, LocalFleet(Path(root), count=servers) as fleet:
        prefect = LocalPrefectServer(Path(root) / "prefect")
        prefect.start()
        try:
            urls = [server.url for server in fleet.servers]
            with temporary_settings(updates={PREFECT_API_URL: prefect.api_url}):
                async with given_servers(urls, get_settings()) as names:
                    _, code = await run_with_progress(spec.model_copy(update={"servers": names}))
                await APILogHandler.aflush()  # logs reach the server before it stops
        finally:
            prefect.stop()
    return code


@app.command
def dashboard() -> int:
    """Serve the dashboard page and API on COMFYBATCH_DASHBOARD_HOST:PORT (127.0.0.1:8600; OpenAPI at /docs).

    Every /api route needs a bearer key from COMFYBATCH_API_KEYS (name:key,...), unless
    COMFYBATCH_API_AUTH_DISABLED=true for a local single-user setup.
    """
    from comfybatch.dashboard.__main__ import main as serve_dashboard

    serve_dashboard()
    return 0


fleet = App(name="fleet", help="Change the fleet while batches run.")
app.command(fleet)


@fleet.command
async def drain(name: str) -> int:
    """Send no new prompts to server NAME (its prompts in flight finish); running batches follow within 5 s.

    Args:
        name: The server's name, as `/api/servers` lists it.
    """
    return await _drain(name, draining=True)


@fleet.command
async def undrain(name: str) -> int:
    """Send prompts to server NAME again.

    Args:
        name: The server's name, as `/api/servers` lists it.
    """
    return await _drain(name, draining=False)


async def _drain(name: str, *, draining: bool) -> int:
    from comfybatch.blocks.drain import set_draining

    now = sorted(await set_draining(name, draining))
    print(f"{'draining' if draining else 'undrained'} {name}; servers draining now: {', '.join(now) or 'none'}")
    return 0


for _command in (platform_commands.up, platform_commands.stop, platform_commands.status, platform_commands.logs,
                 platform_commands.restart, platform_commands.serve):  # fmt: skip
    app.command(_command)


def main() -> None:
    """Entry point: our errors become one clear line and exit 2, never a traceback."""
    try:
        code = app(result_action="return_value")
    except ComfyBatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except ValidationError as exc:  # a request model refused its input
        print(f"error: the batch request is not valid:\n{validation_text(exc, fields=BatchSpec.model_fields)}",
              file=sys.stderr)  # fmt: skip
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # the last line of defence: name the bug, hide the traceback
        print(f"internal error: {exc!r} (please report it)", file=sys.stderr)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
