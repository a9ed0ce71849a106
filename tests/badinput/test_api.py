"""Bad input through the REST shim, in process: a 4xx naming the field, never a 500 or a traceback."""

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect.client.schemas.objects import FlowRun

from comfybatch.dashboard.app import create_app
from comfybatch.dashboard.launcher import Launcher
from comfybatch.models import BatchSpec
from comfybatch.settings import Settings
from tests.badinput import corpus

pytestmark = pytest.mark.anyio
API_KEY = "badinput-key-0123456789abcdef"
_AUTH = {"good": f"Bearer {API_KEY}", "wrong": "Bearer not-the-key-0123456789", "basic": f"Basic {API_KEY}"}


class RecordingLauncher(Launcher):
    """The launcher seam with Prefect left out: a request that gets this far is recorded, not run."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings, api_url="http://127.0.0.1:9/api")  # anything else that reaches Prefect fails
        self.started: list[BatchSpec] = []

    async def start(self, spec: BatchSpec, idempotency_key: str | None, submitted_by: str) -> FlowRun:
        self.started.append(spec)
        return FlowRun(flow_id=uuid.uuid4(), name=spec.name)


@pytest.mark.parametrize("case", corpus.cases("api"))
async def test_api_bad_input_is_a_clear_4xx(case: corpus.Case, tmp_path: Path) -> None:
    """Each API case answers its status with the field named; refused requests start nothing and write nothing."""
    corpus.prepare(case, tmp_path)
    before = corpus.files_outside_out(tmp_path)
    settings = Settings(output_root=str(tmp_path / "out"), api_keys={"ci": API_KEY})
    launcher = RecordingLauncher(settings)
    transport = httpx.ASGITransport(app=create_app(settings, launcher), raise_app_exceptions=False)

    async with httpx.AsyncClient(transport=transport, base_url="http://dashboard") as http:
        response = await http.request(case.raw.get("method", "POST"), case.raw.get("path", "/api/batches"),
                                      **_request(case))  # fmt: skip

    assert response.status_code == case.expect["status"], response.text[:2000]
    assert response.headers["content-type"].startswith("application/json")
    corpus.check_message(case, response.text)
    launched = case.expect.get("launched", False)
    assert len(launcher.started) == (1 if launched else 0)
    if launched:
        assert launcher.started[0] == BatchSpec.model_validate(case.raw["json"])  # verbatim, nothing rewritten
    corpus.check_nothing_lost_or_escaped(tmp_path, before)


def _request(case: corpus.Case) -> dict[str, Any]:
    headers = {str(name): str(value) for name, value in case.raw.get("headers", {}).items()}
    if (auth := case.raw.get("auth", "good")) != "none":
        headers["Authorization"] = _AUTH[auth]
    if "content_type" in case.raw:
        headers["Content-Type"] = case.raw["content_type"]
    if "oversize_bytes" in case.raw:
        return {"headers": headers, "content": _oversized(case.raw["oversize_bytes"], headers)}
    if "json" in case.raw:
        return {"headers": headers, "json": case.raw["json"]}
    if "body" in case.raw:
        return {"headers": headers, "content": case.raw["body"].encode()}
    return {"headers": headers}


def _oversized(size: int, headers: dict[str, str]) -> bytes:
    """A valid request (JSON by default, else a CSV sheet) of at least `size` bytes."""
    if headers.get("Content-Type", "application/json") != "application/json":
        return ("prompt\n" + "a cat in the rain\n" * (size // 18 + 1)).encode()
    headers["Content-Type"] = "application/json"
    prompts = [f"a cat in the rain number {n}" for n in range(size // 30 + 1)]
    return json.dumps({"name": "huge", "workflow": "txt2img-tiny", "prompts": prompts}).encode()
