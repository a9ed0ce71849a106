"""The generate-batch deployment triggered over Prefect's REST API with plain HTTP, as another system would."""

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, ServeProcess, api_call, api_json, serve_env, serving, wait_until

pytestmark = pytest.mark.timeout(240)


@dataclass(frozen=True)
class RestPlatform:
    """A served generate-batch deployment rendering into `out`."""

    api_url: str
    out: Path
    serve: ServeProcess

    def deployment_id(self) -> str:
        deployment = api_json(api_call("GET", f"{self.api_url}/deployments/name/{GENERATE_BATCH}"))
        return str(deployment["id"])

    def create_flow_run(self, spec: dict[str, Any]) -> httpx.Response:
        # The idempotency key makes a retried POST (after a 503) return the same flow run, never a second one.
        body = {"parameters": {"spec": spec}, "idempotency_key": uuid.uuid4().hex}
        return api_call("POST", f"{self.api_url}/deployments/{self.deployment_id()}/create_flow_run", json=body)


@pytest.fixture(scope="module")
def rest_platform(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RestPlatform]:
    """`comfybatch serve` against this module's Prefect server (the inbox schedule keeps its 5-minute cron)."""
    root = tmp_path_factory.mktemp("rest-platform")
    env = serve_env(platform_prefect.api_url, comfy_fleet, root)
    with serving(platform_prefect.api_url, env, root, GENERATE_BATCH) as serve:
        yield RestPlatform(platform_prefect.api_url, root / "out", serve)


def test_generate_batch_deployment_renders_a_batch_posted_over_rest(rest_platform: RestPlatform) -> None:
    """A flow run created with POST create_flow_run reaches Completed and its images are stored."""
    spec = {"name": "rest-batch", "workflow": "txt2img-tiny", "prompts": ["a red fox", "a blue jay"],
            "defaults": {"steps": 1}}  # fmt: skip
    created = rest_platform.create_flow_run(spec)
    assert created.is_success, created.text
    run_url = f"{rest_platform.api_url}/flow_runs/{created.json()['id']}"
    started = time.monotonic()

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = api_json(api_call("GET", run_url))
        return run if run["state_type"] in TERMINAL else None

    run = wait_until(
        finished, timeout_s=90, what="the REST-created flow run to finish", context=rest_platform.serve.tail
    )

    assert (run["state_type"], run["name"]) == ("COMPLETED", "rest-batch"), (run["state"], time.monotonic() - started)
    assert len(sorted((rest_platform.out / "rest-batch").glob("0*.png"))) == 2


@pytest.mark.parametrize(
    ("field", "value"), [("name", "my batch"), ("images_per_item", 0)], ids=["name-with-spaces", "zero-images"]
)
def test_generate_batch_deployment_refuses_invalid_parameters_naming_the_field(
    rest_platform: RestPlatform, field: str, value: object
) -> None:
    """Parameters that break BatchSpec's schema are refused with 409 and a message naming the field."""
    spec = {"name": "rest-invalid", "workflow": "txt2img-tiny", "prompts": ["a cat"], field: value}

    refused = rest_platform.create_flow_run(spec)

    assert refused.status_code == 409, refused.text
    assert f"'spec.{field}'" in refused.json()["detail"]


def test_generate_batch_deployment_refuses_an_unknown_template_when_the_run_is_created(
    rest_platform: RestPlatform,
) -> None:
    """A misspelt template is refused by Prefect itself (409 naming the workflow) and no flow run is created."""
    spec = {"name": "rest-typo", "workflow": "txt2img-huge", "prompts": ["a cat"]}

    refused = rest_platform.create_flow_run(spec)

    assert refused.status_code == 409, refused.text
    assert "'spec.workflow'" in refused.json()["detail"]
    runs = api_json(api_call("POST", f"{rest_platform.api_url}/flow_runs/filter",
                             json={"flow_runs": {"name": {"any_": ["rest-typo"]}}}))  # fmt: skip
    assert runs == []


def test_generate_batch_run_form_offers_templates_and_describes_every_field(rest_platform: RestPlatform) -> None:
    """The deployment's parameter schema (Prefect's run form) lists the templates and describes each field in words,
    with no optional field starting on a null value (the form's 'Property is type "None"')."""
    deployment = api_json(api_call("GET", f"{rest_platform.api_url}/deployments/{rest_platform.deployment_id()}"))
    schema = deployment["parameter_openapi_schema"]
    form = schema["definitions"]["BatchSpec"]
    fields = form["properties"]

    assert {"txt2img-tiny", "picture-book-tiny"} <= set(fields["workflow"]["anyOf"][0]["enum"])
    assert deployment["enforce_parameter_schema"] is True
    assert [name for name, field in fields.items() if not field.get("description")] == []
    assert [name for name, field in fields.items() if "default" in field and field["default"] is None] == []
    assert "Prefect UI" not in form["description"]


def test_generate_batch_user_error_fails_with_a_sentence_and_no_traceback(rest_platform: RestPlatform) -> None:
    """A request Prefect's schema lets through but the batch refuses (its sheet does not exist) ends Failed, and the
    run's logs name the sheet in a sentence with no Python traceback."""
    spec = {"name": "rest-no-sheet", "workflow": "txt2img-tiny", "sheet": str(rest_platform.out / "absent.csv")}
    created = rest_platform.create_flow_run(spec)
    assert created.is_success, created.text
    run_id = created.json()["id"]

    def finished() -> dict[str, Any] | None:
        run: dict[str, Any] = api_json(api_call("GET", f"{rest_platform.api_url}/flow_runs/{run_id}"))
        return run if run["state_type"] in TERMINAL else None

    run = wait_until(finished, timeout_s=90, what="the refused run to end", context=rest_platform.serve.tail)

    def stopped_log() -> list[str] | None:
        logs = api_json(api_call("POST", f"{rest_platform.api_url}/logs/filter",
                                 json={"logs": {"flow_run_id": {"any_": [run_id]}}}))  # fmt: skip
        messages = [str(log["message"]) for log in logs]
        return messages if any("the batch stopped" in message for message in messages) else None

    messages = wait_until(stopped_log, timeout_s=30, what="the run's logs", context=rest_platform.serve.tail)
    assert run["state_type"] == "FAILED"
    assert any("absent.csv" in message for message in messages if "the batch stopped" in message)
    assert not [message for message in messages if "Traceback" in message]
