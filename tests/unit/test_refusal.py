"""Prefect's exception logs of our errors become one sentence (`comfybatch/flows/refusal.py`)."""

import logging
import sys

import pytest

from comfybatch.errors import FleetExhausted
from comfybatch.flows.refusal import quiet_user_errors


@pytest.mark.parametrize(("logger", "sentence"), [("prefect.flow_runs", "the batch stopped: "),
                                                  ("prefect.task_runs", "the image failed: ")])  # fmt: skip
def test_our_error_is_logged_as_a_sentence_without_traceback(
    logger: str, sentence: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An `exc_info` log of a ComfyBatchError on Prefect's run loggers keeps its message and loses the traceback."""
    quiet_user_errors()
    try:
        raise FleetExhausted("demo-00001", [])
    except FleetExhausted:
        with caplog.at_level(logging.ERROR, logger=logger):
            logging.getLogger(logger).error("Task run failed with exception: %r", sys.exc_info()[1], exc_info=True)

    (record,) = [r for r in caplog.records if r.name == logger]
    assert record.getMessage() == sentence + "demo-00001: every eligible server failed (no server could take it)"
    assert record.exc_info is None


def test_a_bug_keeps_its_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """An exception that is not ours (a bug) is logged as Prefect logs it, traceback included."""
    quiet_user_errors()
    try:
        raise KeyError("spec")
    except KeyError:
        with caplog.at_level(logging.ERROR, logger="prefect.flow_runs"):
            logging.getLogger("prefect.flow_runs").exception("Encountered exception during execution")

    (record,) = [r for r in caplog.records if r.name == "prefect.flow_runs"]
    assert record.exc_info is not None
