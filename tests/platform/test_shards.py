"""A batch over its shard size on the served deployments: cancelled, its shards stop with it and its record is
written; run again, it resumes, rendering only what is missing."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.local.prefect_server import LocalPrefectServer
from comfybatch.models import BatchSpec
from comfybatch.outputs.manifest import read_manifest
from comfybatch.outputs.storage import OutputStore
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, ServeProcess, api_call, api_json, serve_env, serving, wait_until
from tests.support.batches import delay_spec, finished_records

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def served(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServeProcess, Path, list[str]]]:
    """`comfybatch serve --limit 6` (a batch's run and its shards each take one), serving render-shard too."""
    root = tmp_path_factory.mktemp("shards")
    env = serve_env(platform_prefect.api_url, comfy_fleet, root)
    with serving(platform_prefect.api_url, env, root, GENERATE_BATCH, "render-shard/render-shard",
                 args=("--limit", "6")) as serve:  # fmt: skip
        yield serve, root / "out", [name_from_url(server.url) for server in comfy_fleet.servers]


def _start(api: str, spec: BatchSpec) -> dict[str, Any]:
    deployment = api_json(api_call("GET", f"{api}/deployments/name/{GENERATE_BATCH}"))
    body = {"parameters": {"spec": spec.model_dump(mode="json")}}
    run: dict[str, Any] = api_json(api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json=body))
    return run


def _ended(api: str, flow_run_id: str) -> dict[str, Any] | None:
    run: dict[str, Any] = api_json(api_call("GET", f"{api}/flow_runs/{flow_run_id}"))
    return run if run["state_type"] in TERMINAL else None


def _shard_runs(api: str, batch: str) -> list[dict[str, Any]]:
    body = {"flow_runs": {"name": {"like_": f"{batch}-shard-%"}}}
    runs: list[dict[str, Any]] = api_json(api_call("POST", f"{api}/flow_runs/filter", json=body))
    return runs


def test_cancelled_sharded_batch_stops_its_shards_and_resumes_when_run_again(
    platform_prefect: LocalPrefectServer, served: tuple[ServeProcess, Path, list[str]]
) -> None:
    """Cancelling the batch's run cancels its shards still going (one that finished all its images first stays
    Completed) and writes its manifest (done and not rendered); the same request run again renders only the rest in
    new shards, and the batch completes with every image once."""
    api, (serve, out, servers) = platform_prefect.api_url, served
    spec = delay_spec("sharded-cancel", seconds=0.5, count=36, servers=servers, shard_size=12)
    first = _start(api, spec)
    wait_until(lambda: finished_records(out / spec.name) >= 4 and len(_shard_runs(api, spec.name)) == 3,
               timeout_s=120, what="three shards started, images stored", context=serve.tail)  # fmt: skip

    cancel = {"state": {"type": "CANCELLING", "message": "cancelled by the test"}, "force": True}
    api_json(api_call("POST", f"{api}/flow_runs/{first['id']}/set_state", json=cancel))
    cancelled = wait_until(lambda: _ended(api, first["id"]), timeout_s=120, what="the cancel", context=serve.tail)
    shards = wait_until(lambda: (runs := _shard_runs(api, spec.name)) and all(r["state_type"] in TERMINAL
                                                                               for r in runs) and runs,
                        timeout_s=120, what="the shards to stop", context=serve.tail)  # fmt: skip
    stopped = read_manifest(OutputStore(str(out)), spec.name)
    second = _start(api, spec)
    resumed = wait_until(lambda: _ended(api, second["id"]), timeout_s=240, what="the rerun", context=serve.tail)
    manifest = read_manifest(OutputStore(str(out)), spec.name)

    assert cancelled["state_type"] == "CANCELLED"
    assert len(shards) == 3
    assert {run["state_type"] for run in shards} <= {"CANCELLED", "COMPLETED"}
    assert "CANCELLED" in {run["state_type"] for run in shards}
    assert stopped is not None
    assert len(stopped) == 36
    assert set(stopped["status"]) <= {"done", "cancelled"}, stopped[stopped["status"] == "failed"].to_dict("records")
    assert 0 < (stopped["status"] == "done").sum() < 36
    assert resumed["state_type"] == "COMPLETED", resumed["state"]
    assert manifest is not None
    assert (manifest["status"] == "done").sum() == 36
    # The rerun shards what is left only when more than one shard's worth is (else it renders in its own run).
    left = 36 - int((stopped["status"] == "done").sum())
    assert (len(_shard_runs(api, spec.name)) > 3) == (left > 12), left


def test_batch_run_that_crashed_too_often_refuses_to_start_again(
    platform_prefect: LocalPrefectServer, served: tuple[ServeProcess, Path, list[str]]
) -> None:
    """A generate-batch run whose history already holds COMFYBATCH_RUN_ATTEMPTS (3) executions that crashed fails at
    its fourth start, saying why, instead of rendering: the crash reruns are bounded."""
    api, (serve, out, servers) = platform_prefect.api_url, served
    spec = delay_spec("crashed-thrice", seconds=0.1, count=2, servers=servers)
    deployment = api_json(api_call("GET", f"{api}/deployments/name/{GENERATE_BATCH}"))
    later = {"type": "SCHEDULED", "state_details": {"scheduled_time": "2099-01-01T00:00:00Z"}}
    run = api_json(api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run",
                            json={"parameters": {"spec": spec.model_dump(mode="json")}, "state": later}))  # fmt: skip
    for state in ("RUNNING", "CRASHED") * 3:  # three executions whose machines died
        api_json(api_call("POST", f"{api}/flow_runs/{run['id']}/set_state",
                          json={"state": {"type": state}, "force": True}))  # fmt: skip
    api_json(api_call("POST", f"{api}/flow_runs/{run['id']}/set_state",
                      json={"state": {"type": "SCHEDULED", "name": "AwaitingRetry"}, "force": True}))  # fmt: skip

    ended = wait_until(lambda: _ended(api, run["id"]), timeout_s=120, what="the fourth start", context=serve.tail)

    assert ended["state_type"] == "FAILED"
    assert "crashed 3 times" in (ended["state"]["message"] or ""), ended["state"]
    assert not (out / spec.name / ".jobs").exists()
