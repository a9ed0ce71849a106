"""Prefect's exception logs of our errors become one sentence (`comfybatch/flows/refusal.py`)."""

import logging

import pytest

from comfybatch.errors import FleetExhausted
from comfybatch.flows.refusal import quiet_user_errors


def _filtered(logger: str, exc: BaseException) -> logging.LogRecord:
    """A record as Prefect's engine makes it (`exc_info=True`), passed through the logger's own filters."""
    record = logging.LogRecord(logger, logging.ERROR, __file__, 1, "Task run failed with exception: %r", (exc,),
                               (type(exc), exc, exc.__traceback__))  # fmt: skip
    assert all(check.filter(record) for check in logging.getLogger(logger).filters)
    return record


@pytest.mark.parametrize(("logger", "sentence"), [("prefect.flow_runs", "the batch stopped: "),
                                                  ("prefect.task_runs", "the image failed: ")])  # fmt: skip
def test_our_error_is_logged_as_a_sentence_without_traceback(logger: str, sentence: str) -> None:
    """An `exc_info` log of a ComfyBatchError on Prefect's run loggers keeps its message and loses the traceback."""
    quiet_user_errors()

    record = _filtered(logger, FleetExhausted("demo-00001", []))

    assert record.getMessage() == sentence + "demo-00001: every eligible server failed (no server could take it)"
    assert record.exc_info is None


def test_a_bug_keeps_its_traceback() -> None:
    """An exception that is not ours (a bug) is logged as Prefect logs it, traceback included."""
    quiet_user_errors()

    record = _filtered("prefect.flow_runs", KeyError("spec"))

    assert record.exc_info is not None
    assert record.getMessage().startswith("Task run failed with exception: KeyError")
