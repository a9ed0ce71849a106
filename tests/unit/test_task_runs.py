"""How a render-image task run reads in the Prefect UI: its name and its retry delays."""

from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.models import JobSpec
from comfybatch.tasks.job import retry_delays, task_run_name


def test_task_run_name_counts_from_one_and_carries_the_slug(workflow: ApiWorkflow) -> None:
    """The first image of batch `demo` labelled `a-red-fox` is the task run `demo-1-a-red-fox`."""
    job = JobSpec(batch="demo", index=0, key="k0", item=0, values={}, label="a-red-fox", workflow=workflow)

    assert task_run_name({"job": job, "context": None}) == "demo-1-a-red-fox"


def test_task_run_name_without_label_says_item(workflow: ApiWorkflow) -> None:
    """A job with no label (no prompt, no image name) is named `<batch>-<n>-item`, as its file is."""
    job = JobSpec(batch="sweep", index=11, key="k11", item=11, values={}, workflow=workflow)

    assert task_run_name({"job": job}) == "sweep-12-item"


def test_retry_delays_are_plain_numbers_doubling() -> None:
    """Two retries on a 10 s base wait 10 s then 20 s: numbers Prefect's UI can show."""
    assert retry_delays(2, 10.0) == [10.0, 20.0]
