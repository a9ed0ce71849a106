"""What a batch request may ask for over HTTP: nothing that names a file on the dashboard's machine or on a
ComfyUI server outside its folders, and nothing larger than Prefect stores as a flow run's parameters."""

import json
from typing import Any

from comfybatch.comfy.intake import detect_format
from comfybatch.comfy.preflight import escaping_path, is_file_input, refuse_unsafe, title_of
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import (
    BatchRequestError,
    NodeProblem,
    RequestProblem,
    RequestTooLarge,
    WorkflowError,
    WorkflowRejected,
)
from comfybatch.inputs import UPLOADS_FOLDER, InputPolicy
from comfybatch.models import BatchSpec, read_template, template_names
from comfybatch.outputs.storage import OutputStore
from comfybatch.problems import field_words
from comfybatch.settings import Settings

UPLOADS = UPLOADS_FOLDER
# Prefect's server refuses larger flow run parameters (PREFECT_SERVER_API_MAX_PARAMETER_SIZE, measured on
# compact JSON): "Flow run parameters must be less than 524,288 bytes".
MAX_PARAMETERS_BYTES = 524_288


def check_api_request(spec: BatchSpec, settings: Settings) -> None:
    """Refuse workflow files, sheets and output folders a client names; templates, inline graphs and uploads only.
    Refuse requests too large to start, and graphs or values that name files outside ComfyUI's folders.

    Raises:
        BatchRequestError naming each field; RequestTooLarge (413) naming the limit;
        WorkflowRejected naming the node, class and input.
    """
    problems: list[RequestProblem] = []
    if isinstance(spec.workflow, str) and spec.workflow not in template_names():
        problems.append(RequestProblem(
            f"{spec.workflow!r} is not a template ({', '.join(template_names())}); send a graph inline instead",
            field="workflow"))  # fmt: skip
    if spec.output:
        problems.append(RequestProblem("is chosen by the operator (COMFYBATCH_OUTPUT_ROOT); leave it out",
                                       field="output"))  # fmt: skip
    if spec.sheet is not None:
        relpath = OutputStore(settings.output_root).relpath_of(spec.sheet)
        if relpath is None or not relpath.startswith(f"{UPLOADS}/"):
            problems.append(
                RequestProblem("upload it with PUT /api/uploads/{filename}; pass the `sheet` it returns", field="sheet")
            )
    problems += _image_problems(spec, InputPolicy.for_api(settings))
    if problems:
        raise BatchRequestError("this batch request is not allowed over the API", problems=tuple(problems))
    check_parameters_size(spec)
    check_files(spec)


def _image_problems(spec: BatchSpec, policy: InputPolicy) -> list[RequestProblem]:
    """Input images over the API are https URLs, files uploaded with PUT /api/uploads or files under the input root
    (`COMFYBATCH_INPUT_LOCAL_ROOT`), never another path of this machine (the flow checks every URL's host against
    the SSRF rules, and every sheet cell against these same rules)."""
    if spec.images is None:
        return []
    entries = [("images", spec.images)] if isinstance(spec.images, str) else [
        (f"images[{number}]", entry) for number, entry in enumerate(spec.images)]  # fmt: skip
    problems = []
    for field, entry in entries:
        if entry.startswith("https://") or policy.permits(entry):
            continue
        message = f"{policy.refusal(entry)}; upload it with PUT /api/uploads/{{filename}}"
        problems.append(RequestProblem(message, field=field))
    return problems


def check_parameters_size(spec: BatchSpec) -> None:
    """Refuse a request whose flow run parameters Prefect would not store.

    Raises:
        RequestTooLarge naming the size, the limit and what to do instead.
    """
    size = len(json.dumps({"spec": spec.model_dump(mode="json")}, separators=(",", ":")).encode())
    if size >= MAX_PARAMETERS_BYTES:
        raise RequestTooLarge(
            f"this batch request is {size:,} bytes as flow run parameters; Prefect stores less than "
            f"{MAX_PARAMETERS_BYTES:,}: upload the items as a sheet with PUT /api/uploads/{{filename}} "
            "and pass the `sheet` it returns (or split the batch)",
        )


def check_files(spec: BatchSpec) -> None:
    """Refuse an API-format graph (inline or template) that names a file outside ComfyUI's folders or has a link
    cycle, and `defaults` or `sweep` values bound onto file-name inputs that leave their folder. Sheet cells are
    checked by the preflight after binding, before any prompt is queued.

    Raises:
        WorkflowRejected naming the node, class and input (and the field the value came from).
    """
    data: Any = read_template(spec.workflow)
    try:
        if detect_format(data) != "api":
            return  # UI format: converted with a server's /object_info, then checked by the preflight
        workflow = ApiWorkflow(data)
        offered = workflow.parameters(spec.bindings or None)
    except WorkflowError:
        return  # refused with its own message where the flow loads it
    refuse_unsafe(workflow)
    problems = [
        NodeProblem(path.node_id, f"{field_words(field)} = {value!r} {why}; name a file inside ComfyUI's folders",
                    class_type=workflow.class_type(path.node_id), input_name=path.input_name,
                    kind="file_outside_folder", title=title_of(workflow.nodes[path.node_id]))
        for field, name, value in _set_values(spec) for path in offered.get(name, ())
        if isinstance(value, str) and is_file_input(workflow.class_type(path.node_id), path.input_name)
        and (why := escaping_path(value))
    ]  # fmt: skip
    if problems:
        raise WorkflowRejected("the request names files outside ComfyUI's folders", problems=tuple(problems))


def _set_values(spec: BatchSpec) -> list[tuple[str, str, Any]]:
    """(field, parameter, value) of every value the request itself sets (sheet rows aside)."""
    found: list[tuple[str, str, Any]] = [(f"defaults.{name}", name, value) for name, value in spec.defaults.items()]
    groups = [("sweep.axes", spec.sweep.axes), *((f"sweep.zipped[{n}]", g) for n, g in enumerate(spec.sweep.zipped))]
    found += [(f"{where}.{name}", name, value) for where, group in groups for name, values in group.items()
              for value in values]  # fmt: skip
    return found
