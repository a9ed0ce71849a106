"""What a batch request may ask for over HTTP: nothing that names a file on the dashboard's machine."""

from comfybatch.errors import BatchRequestError, RequestProblem
from comfybatch.flows.preview import template_names
from comfybatch.models import BatchSpec
from comfybatch.outputs.storage import OutputStore
from comfybatch.settings import Settings

UPLOADS = ".uploads"


def check_api_request(spec: BatchSpec, settings: Settings) -> None:
    """Refuse workflow files, sheets and output folders a client names; templates, inline graphs and uploads only.

    Raises:
        BatchRequestError naming each field.
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
    if problems:
        raise BatchRequestError("this batch request is not allowed over the API", problems=tuple(problems))
