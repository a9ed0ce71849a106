"""`process-inbox/scheduled-production` on a real scheduler: sheets dropped in the inbox become batches."""

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from comfybatch.deployments.catalog import GENERATE_BATCH, SCHEDULED_PRODUCTION
from comfybatch.local.prefect_server import LocalPrefectServer
from tests.conftest import SuiteFleet
from tests.platform.conftest import (
    TERMINAL,
    ServeProcess,
    api_call,
    api_json,
    read_report,
    serve_env,
    serving,
    wait_until,
)
from tests.support import batches

pytestmark = pytest.mark.timeout(300)

SETTLE_S = 90.0
DELAY_S = 2.5  # per image: the overlapping batch runs for several schedule ticks (every 2 s)


@dataclass(frozen=True)
class InboxPlatform:
    """A served scheduled-production deployment watching `root/inbox`, rendering into `root/out`."""

    api_url: str
    root: Path
    serve: ServeProcess

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def out(self) -> Path:
        return self.root / "out"

    def drop(self, name: str, text: str) -> None:
        """Write the file beside the inbox, then rename it in: the flow never sees half a file."""
        staged = self.root / "staging" / name
        staged.parent.mkdir(exist_ok=True)
        staged.write_text(text)
        self.inbox.mkdir(exist_ok=True)
        os.replace(staged, self.inbox / name)

    def settled(self, sheet: str) -> tuple[str, dict[str, Any]]:
        """Wait until `sheet` sits in done/ or failed/ beside its report; (folder, report)."""

        def where() -> tuple[str, dict[str, Any]] | None:
            for folder in ("done", "failed"):
                if (self.inbox / folder / sheet).is_file():
                    report = read_report(self.inbox / folder / f"{sheet}.report.json")
                    if report is not None:
                        return folder, report
            return None

        return wait_until(where, timeout_s=SETTLE_S, what=f"{sheet} in done/ or failed/", context=self.serve.tail)


@pytest.fixture(scope="module")
def inbox_platform(
    platform_prefect: LocalPrefectServer, comfy_fleet: SuiteFleet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InboxPlatform]:
    """`comfybatch serve` with the inbox schedule every 2 s and txt2img-tiny for sheets that name no workflow."""
    root = tmp_path_factory.mktemp("inbox-platform")
    env = serve_env(platform_prefect.api_url, comfy_fleet, root, COMFYBATCH_INBOX_INTERVAL_S="2",
                    COMFYBATCH_INBOX_WORKFLOW="txt2img-tiny")  # fmt: skip
    with serving(platform_prefect.api_url, env, root, SCHEDULED_PRODUCTION, GENERATE_BATCH) as serve:
        yield InboxPlatform(platform_prefect.api_url, root, serve)


@dataclass(frozen=True)
class OverlapRun:
    """A Delay-node sheet processed while the schedule kept firing."""

    batch: str
    nonces: list[str]
    folder: str
    report: dict[str, Any]
    executions: dict[str, int]
    batch_runs: list[dict[str, Any]]  # generate-batch flow runs named after the batch
    inbox_run: dict[str, Any]  # the process-inbox run that rendered it
    inbox_runs: list[dict[str, Any]]  # every finished process-inbox run


@pytest.fixture(scope="module")
def overlap_run(inbox_platform: InboxPlatform, comfy_fleet: SuiteFleet) -> OverlapRun:
    """Four 2.5 s Delay jobs from one sheet (workflow and binding in a `<stem>.json` sidecar), processed once."""
    servers = [server.local for server in comfy_fleet.servers]
    if any(server is None for server in servers):
        pytest.skip("counts executions in the servers' node journals (not available for external servers)")
    batch = "slow-sheet"
    nonces = batches.nonces(batch, 4)
    sidecar = {"workflow": batches.through_graph("ComfybatchDelay", seconds=DELAY_S),
               "bindings": {"nonce": "2.inputs.nonce"}}  # fmt: skip
    inbox_platform.drop(f"{batch}.json", json.dumps(sidecar))
    inbox_platform.drop(f"{batch}.csv", "nonce\n" + "\n".join(nonces) + "\n")

    folder, report = inbox_platform.settled(f"{batch}.csv")

    api = inbox_platform.api_url
    batch_runs = _flow_runs(api, {"flow_runs": {"name": {"any_": [batch]}}})
    inbox_run: dict[str, Any] = {}
    if len(batch_runs) == 1 and batch_runs[0]["parent_task_run_id"]:
        inbox_run = _finished_parent(api, batch_runs[0]["parent_task_run_id"])
    deployment = api_json(api_call("GET", f"{api}/deployments/name/{SCHEDULED_PRODUCTION}"))
    inbox_runs = _flow_runs(api, {"flow_runs": {"deployment_id": {"any_": [deployment["id"]]},
                                                "state": {"type": {"any_": sorted(TERMINAL)}}}})  # fmt: skip
    executions = batches.executions(*[server for server in servers if server is not None])
    return OverlapRun(batch=batch, nonces=nonces, folder=folder, report=report, batch_runs=batch_runs,
                      inbox_run=inbox_run, inbox_runs=inbox_runs,
                      executions={nonce: executions.get(nonce, 0) for nonce in nonces})  # fmt: skip


def _finished_parent(api_url: str, parent_task_run_id: str) -> dict[str, Any]:
    """The flow run that ran a subflow, once it has finished (the report is written just before it ends)."""

    def finished() -> dict[str, Any] | None:
        parent = api_call("GET", f"{api_url}/task_runs/{parent_task_run_id}")
        if parent.status_code == 404:  # task runs reach the server through events, a moment late
            return None
        run: dict[str, Any] = api_json(api_call("GET", f"{api_url}/flow_runs/{api_json(parent)['flow_run_id']}"))
        return run if run["state_type"] in TERMINAL else None

    return wait_until(finished, timeout_s=30, what="the process-inbox run of the slow sheet to finish")


def _flow_runs(api_url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = api_json(api_call("POST", f"{api_url}/flow_runs/filter", json={**body, "limit": 200}))
    return runs


def _time(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _ran_during(run: dict[str, Any], start: datetime, end: datetime) -> bool:
    """The run entered Running (cancelled runs get start and end times too) and overlapped [start, end]."""
    run_start, run_end = _time(run["start_time"]), _time(run["end_time"])
    return bool(run["run_count"]) and run_start is not None and run_start < end and (run_end or end) > start


def test_inbox_schedule_turns_a_dropped_sheet_into_images(inbox_platform: InboxPlatform) -> None:
    """A CSV dropped in the inbox is rendered by a scheduled run into <out>/<stem>/ and moves to done/ with a report."""
    inbox_platform.drop("spring-cards.csv", "prompt,steps\na red fox,1\na blue jay,1\na green frog,1\n")

    folder, report = inbox_platform.settled("spring-cards.csv")

    assert (folder, report["status"], report["batch"]) == ("done", "done", "spring-cards"), report
    assert (report["report"]["done"], report["report"]["failed"]) == (3, 0)
    assert len(sorted((inbox_platform.out / "spring-cards").glob("0*.png"))) == 3
    assert not (inbox_platform.inbox / "spring-cards.csv").exists()


def test_inbox_schedule_sets_a_broken_sheet_aside_naming_row_and_column(inbox_platform: InboxPlatform) -> None:
    """A sheet whose row 3 has width 66 moves to failed/ with a report naming row 3 and column 'width'."""
    inbox_platform.drop("bad-widths.csv", "prompt,steps,width\na cat,1,64\na dog,1,66\na cow,1,64\n")

    folder, report = inbox_platform.settled("bad-widths.csv")

    assert (folder, report["status"]) == ("failed", "failed"), report
    assert "row 3, column 'width'" in report["message"]
    assert not (inbox_platform.out / "bad-widths").exists()


def test_inbox_schedule_renders_each_image_once_while_runs_overlap(overlap_run: OverlapRun) -> None:
    """While the schedule fires during a slow sheet, each of its images is rendered exactly once, by one batch run."""
    assert (overlap_run.folder, overlap_run.report["status"]) == ("done", "done"), overlap_run.report
    assert overlap_run.report["report"]["done"] == len(overlap_run.nonces)
    assert overlap_run.executions == dict.fromkeys(overlap_run.nonces, 1)
    assert [run["state_type"] for run in overlap_run.batch_runs] == ["COMPLETED"]


def test_inbox_schedule_cancels_runs_that_fire_during_a_run(overlap_run: OverlapRun) -> None:
    """Scheduled runs due while a sheet is processed are cancelled by the deployment limit; none runs alongside."""
    inbox_run = overlap_run.inbox_run
    assert inbox_run, f"no process-inbox run found as parent of {overlap_run.batch_runs}"
    start, end = _time(inbox_run["start_time"]), _time(inbox_run["end_time"])
    assert start is not None
    assert end is not None
    cancelled = [run for run in overlap_run.inbox_runs if run["state_type"] == "CANCELLED"
                 and start <= datetime.fromisoformat(run["state"]["timestamp"]) <= end]  # fmt: skip
    alongside = [run["name"] for run in overlap_run.inbox_runs
                 if run["id"] != inbox_run["id"] and _ran_during(run, start, end)]  # fmt: skip

    assert cancelled, "no scheduled run came due while the sheet was processed"
    assert {run["state"]["message"] for run in cancelled} == {"Deployment concurrency limit reached."}
    assert alongside == []


def test_inbox_schedule_sets_a_sheet_with_a_broken_sidecar_aside(inbox_platform: InboxPlatform) -> None:
    """A sheet whose `<stem>.json` sidecar is not JSON moves to failed/ with a report naming the sidecar."""
    inbox_platform.drop("odd-sidecar.json", '{"defaults": {"steps": 1}')
    inbox_platform.drop("odd-sidecar.csv", "prompt\na kite\n")

    folder, report = inbox_platform.settled("odd-sidecar.csv")

    assert (folder, report["status"]) == ("failed", "failed"), report
    assert "odd-sidecar.json" in report["message"]
    assert not (inbox_platform.inbox / "processing" / "odd-sidecar.csv").exists()


def test_inbox_schedule_sets_aside_a_sheet_dropped_again_as_duplicate(inbox_platform: InboxPlatform) -> None:
    """The same sheet dropped again is set aside as a duplicate beside the first, whose report stays; no batch runs."""
    sheet = "prompt,steps\na lantern,1\n"
    inbox_platform.drop("reprint.csv", sheet)
    inbox_platform.settled("reprint.csv")
    inbox_platform.drop("reprint.csv", sheet)

    folder, again = inbox_platform.settled("reprint-2.csv")

    first = read_report(inbox_platform.inbox / "done" / "reprint.csv.report.json")
    assert (folder, again["status"]) == ("done", "duplicate"), again
    assert first is not None
    assert (first["status"], first["sha256"]) == ("done", again["sha256"])
    assert len(_flow_runs(inbox_platform.api_url, {"flow_runs": {"name": {"any_": ["reprint"]}}})) == 1
