"""Schemathesis against the dashboard's OpenAPI schema, on a real Prefect server (issue 10): no 5xx, and every
answer a status and media type the schema documents. Batches are only ever created with `dry_run`."""

from pathlib import Path
from typing import Any

import anyio
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import GENERATE_BATCH, Launcher
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.settings import Settings
from tests.dashboard.conftest import API_KEY, AUTH

EXAMPLES_PER_OPERATION = 25  # ~15 operations: a few hundred requests, well under a minute


@pytest.fixture(scope="module")
def dashboard_schema(platform_prefect: LocalPrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The dashboard on this module's Prefect server, with `generate-batch` registered but no runner: a batch
    created here stays scheduled and renders nothing. No ComfyUI server is configured (validation answers 503)."""
    anyio.run(_register_deployment, platform_prefect.api_url)
    out: Path = tmp_path_factory.mktemp("schema-fuzz") / "out"
    config = Settings(output_root=str(out), api_keys={"ci": API_KEY}, comfyui_urls=[])
    app = create_app(config, Launcher(config, api_url=platform_prefect.api_url))
    return schemathesis.openapi.from_asgi("/openapi.json", app)


async def _register_deployment(api_url: str) -> None:
    flow_name, deployment_name = GENERATE_BATCH.split("/")
    with temporary_settings({PREFECT_API_URL: api_url}):
        async with get_client() as client:
            flow_id = await client.create_flow_from_name(flow_name)
            await client.create_deployment(flow_id=flow_id, name=deployment_name)


@schemathesis.check
def only_documented_outages(ctx: Any, response: Any, case: Any) -> None:
    """No 5xx, except the documented 503 that says when to try again."""
    if response.status_code >= 500 and (response.status_code != 503 or "retry-after" not in response.headers):
        raise AssertionError(f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}")


def test_dashboard_answers_as_its_schema_documents(dashboard_schema: Any) -> None:
    """Generated requests never get a 5xx other than a documented 503, nor an undocumented status or media type."""
    failures: dict[str, str] = {}
    for result in dashboard_schema.get_all_operations():
        operation = result.ok()
        try:
            _fuzz(operation)
        except (Exception, BaseExceptionGroup) as exc:  # one operation's failure must not hide the others'
            failures[operation.label] = str(exc)[:1500]

    assert not failures, "\n\n".join(f"{label}:\n{why}" for label, why in failures.items())


def _fuzz(operation: Any) -> None:
    @given(case=operation.as_strategy())
    @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])  # fmt: skip
    def run(case: Any) -> None:
        if case.method == "POST" and case.path == "/api/batches" and isinstance(case.body, dict):
            case.body["dry_run"] = True  # never queue real work
        case.call_and_validate(
            headers=AUTH, checks=[only_documented_outages, status_code_conformance, content_type_conformance]
        )

    run()
