"""`comfybatch restart` and `stop` during a batch: restart resumes it, stop records why it ended."""

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from comfybatch.blocks.server import name_from_url
from comfybatch.deployments.platform import is_alive, stop_component
from comfybatch.local.fleet import free_port
from tests.conftest import SuiteFleet
from tests.platform.conftest import TERMINAL, api_call, api_json, clean_env, wait_until
from tests.platform.test_up import _comfybatch, _components
from tests.support.batches import delay_spec

pytestmark = pytest.mark.timeout(420)


@dataclass(frozen=True)
class Platform:
    """A platform `comfybatch up` started on the suite's fleet (no demo servers)."""

    root: Path
    env: dict[str, str]
    api_url: str
    server: str

    def comfybatch(self, *args: str, timeout_s: float = 180.0) -> str:
        done = _comfybatch(*args, cwd=self.root, env=self.env, timeout_s=timeout_s)
        assert done.returncode == 0, f"{args} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def start_batch(self, name: str) -> dict[str, Any]:
        """A generate-batch run of 4 Delay jobs (2 s each) on one server, so they run one after another."""
        spec = delay_spec(name, seconds=2, count=4, servers=[self.server])
        deployment = api_json(api_call("GET", f"{self.api_url}/deployments/name/generate-batch/generate-batch"))
        body = {"parameters": {"spec": spec.model_dump(mode="json")}}
        url = f"{self.api_url}/deployments/{deployment['id']}/create_flow_run"
        run: dict[str, Any] = api_json(api_call("POST", url, json=body))
        return run

    def flow_run(self, flow_run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = api_json(api_call("GET", f"{self.api_url}/flow_runs/{flow_run_id}"))
        return run

    def finished_records(self, name: str) -> dict[str, str]:
        """Journal records of batch `name` (in whatever folder it got) whose image is stored, by file."""
        journals = {path.name: path.read_text() for path in (self.root / "out").glob(f"{name}*/.jobs/*.json")}
        return {file: text for file, text in journals.items() if _stored(json.loads(text))}

    def wait_for_first_image(self, run: dict[str, Any], name: str) -> None:
        wait_until(lambda: len(self.finished_records(name)) >= 1, timeout_s=90, what=f"{name}: a first image",
                   context=lambda: str(self.flow_run(run["id"])["state"]))  # fmt: skip
        assert self.flow_run(run["id"])["state_type"] == "RUNNING"

    def resumed_from(self, flow_run_id: str) -> list[dict[str, Any]]:
        body = {"flow_runs": {"tags": {"all_": [f"resumed-from:{flow_run_id}"]}}}
        runs: list[dict[str, Any]] = api_json(api_call("POST", f"{self.api_url}/flow_runs/filter", json=body))
        return runs


def _stored(record: dict[str, Any]) -> bool:
    """A finished record with its image (a job cut short is recorded finished with an error and no file)."""
    result = record.get("result") or {}
    return record.get("state") == "finished" and bool(result.get("files")) and not result.get("error")


@pytest.fixture(scope="module")
def platform(comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    """`comfybatch up` with COMFYUI_URLS naming the suite's servers; whatever it started is stopped afterwards."""
    root = tmp_path_factory.mktemp("handover")
    port = free_port()
    env = clean_env(COMFYBATCH_HOME=str(root / "home"), COMFYBATCH_CONFIG_FILE="/dev/null",
                    PREFECT_HOME=str(root / "prefect-client"), COMFYBATCH_DASHBOARD_PORT=str(free_port()),
                    COMFYUI_URLS=",".join(server.url for server in comfy_fleet.servers),
                    COMFYBATCH_OUTPUT_ROOT=str(root / "out"), PREFECT_RUNNER_POLL_FREQUENCY="1")  # fmt: skip
    try:
        up = _comfybatch("up", "--port", str(port), cwd=root, env=env, timeout_s=180)
        assert up.returncode == 0, f"up exited {up.returncode}\n{up.stdout}\n{up.stderr}"
        yield Platform(root, env, f"http://127.0.0.1:{port}/api", name_from_url(comfy_fleet.servers[0].url))
    finally:
        for component in _components(root / "home").values():  # by pid, only if it still runs what up started
            if is_alive(component):
                stop_component(component, timeout_s=10)


def test_restart_during_a_batch_resumes_it_in_a_new_run(platform: Platform) -> None:
    """A batch running during `restart` ends Cancelled saying so, and a new run tagged resumed-from:<old id>, with
    the same spec, finishes it: the images stored before are skipped, the rest rendered."""
    run = platform.start_batch("restarted")
    platform.wait_for_first_image(run, "restarted")

    output = platform.comfybatch("restart")
    before = platform.finished_records("restarted")  # the old run's process is gone; the new one just starts

    old = platform.flow_run(run["id"])
    assert (old["state_type"], old["state"]["message"]) == (
        "CANCELLED", f"cancelled by comfybatch restart: the platform restarted during the batch, which goes on in a "
        f"new run tagged resumed-from:{run['id']}",
    )  # fmt: skip
    (resumed,) = platform.resumed_from(run["id"])
    assert resumed["parameters"] == run["parameters"]
    assert f"resumed-from:{run['id']}" in output
    final = wait_until(lambda: (state := platform.flow_run(resumed["id"])["state_type"]) in TERMINAL and state,
                       timeout_s=120, what="the resumed run")  # fmt: skip
    assert final == "COMPLETED"
    after = platform.finished_records("restarted")
    assert len(after) == 4
    assert {file: after[file] for file in before} == before  # finished images were skipped, not rendered again


def test_stop_during_a_batch_records_who_ended_it(platform: Platform) -> None:
    """A batch running during `stop` ends Cancelled with "cancelled by comfybatch stop …; run it again to resume"
    (not "Runner is shutting down."), and the next `up` does not start it again by itself."""
    run = platform.start_batch("stopped")
    platform.wait_for_first_image(run, "stopped")

    platform.comfybatch("stop")
    platform.comfybatch("up", "--port", platform.api_url.split(":")[-1].removesuffix("/api"))

    old = platform.flow_run(run["id"])
    assert (old["state_type"], old["state"]["message"]) == (
        "CANCELLED", "cancelled by comfybatch stop: the platform stopped during the batch; run it again to resume"
    )  # fmt: skip
    assert platform.resumed_from(run["id"]) == []
