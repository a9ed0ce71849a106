"""A task run the batch's own end stopped (a cancel, the runner's SIGTERM) is an image not rendered, never a failed
one: a failure would be written to the journal and shown in the manifest, and a rerun would not adopt its prompt."""

import asyncio

from prefect.states import Cancelled, Crashed

from comfybatch.flows.workers import result_of
from comfybatch.models import JobSpec


def _job() -> JobSpec:
    graph = {"1": {"class_type": "X", "inputs": {}}}
    return JobSpec(batch="b", index=0, key="k0", item=0, image=0, workflow=graph, values={})


def test_crashed_task_run_is_a_cancelled_image() -> None:
    result = asyncio.run(result_of(_job(), Crashed(message="Execution was cancelled by the runtime environment.")))

    assert result.status == "cancelled"


def test_cancelled_task_run_is_a_cancelled_image() -> None:
    assert asyncio.run(result_of(_job(), Cancelled(message="cancelled by the test"))).status == "cancelled"
