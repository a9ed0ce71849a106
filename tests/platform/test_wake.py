"""A served deployment's runner starts a triggered run when Prefect announces it, not at its next poll."""

import time
from pathlib import Path

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.deployments.catalog import GENERATE_BATCH
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, api_call, api_json, serve_env, serving, wait_until
from tests.support.batches import delay_spec

pytestmark = pytest.mark.timeout(300)

_POLL_S = 60  # the runner's next poll comes 42-78 s after its first (Prefect jitters the interval by 30 %)


def test_a_run_created_on_the_deployment_starts_without_waiting_for_the_runner_s_poll(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path: Path
) -> None:
    """With the runner polling once a minute, a run created on generate-batch (as the API does) leaves Scheduled
    within 10 s: the Prefect server's announcement of the new run wakes the runner."""
    api = platform_prefect.api_url
    env = serve_env(api, comfy_fleet, tmp_path)
    with serving(api, env, tmp_path, GENERATE_BATCH, args=("--poll-s", str(_POLL_S))) as serve:
        wait_until(lambda: "serving" in serve.tail(), timeout_s=60, what="serve's runner", context=serve.tail)
        time.sleep(3.0)  # the runner's first poll and the event subscription are behind us
        spec = delay_spec("woken", seconds=0.1, count=1, servers=[name_from_url(comfy_fleet.servers[0].url)])
        deployment = api_json(api_call("GET", f"{api}/deployments/name/{GENERATE_BATCH}"))
        body = {"parameters": {"spec": spec.model_dump(mode="json")}, "name": "woken"}
        run = api_json(api_call("POST", f"{api}/deployments/{deployment['id']}/create_flow_run", json=body))

        def started() -> dict[str, str] | None:
            found: dict[str, str] = api_json(api_call("GET", f"{api}/flow_runs/{run['id']}"))
            return found if found["state_type"] != "SCHEDULED" else None

        wait_until(started, timeout_s=10, what="the run to leave Scheduled", context=serve.tail, interval_s=0.1)
        ended = wait_until(lambda: (found := started()) and found["state_type"] in TERMINAL and found, timeout_s=60,
                           what="the run to end", context=serve.tail)  # fmt: skip
        assert ended["state_type"] == "COMPLETED"
