"""Where a batch's run came from: the dashboard (a request over the API) or an operator (CLI, Prefect UI, schedule).

An API request may name only uploaded files, https URLs, and files under `COMFYBATCH_INPUT_LOCAL_ROOT`.
"""

from prefect.context import FlowRunContext

from comfybatch.inputs import InputPolicy
from comfybatch.settings import Settings

API_RUN_TAG = "dashboard"  # the launcher tags every run it creates (a resumed run keeps its tags)


def is_api_run() -> bool:
    """Whether the current flow run was created by the dashboard for a request over the API."""
    run = FlowRunContext.get()
    return run is not None and run.flow_run is not None and API_RUN_TAG in run.flow_run.tags


def input_policy_of_run(settings: Settings) -> InputPolicy:
    """The input rules of the current run: confined to uploads and the input root when it came over the API."""
    return InputPolicy.for_api(settings) if is_api_run() else InputPolicy.from_settings(settings)
