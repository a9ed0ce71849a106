"""A flow or task run that fails for a reason of ours (a wrong request, sheet or workflow, no server, an image
ComfyUI could not render) logs one sentence in the Prefect UI, not a Python traceback: tracebacks are kept for bugs
(exceptions that are not ours)."""

import logging

from comfybatch.errors import ComfyBatchError

# Prefect's engines log "Encountered exception during execution" / "Task run failed with exception" here.
_LOGGERS = {"prefect.flow_runs": "the batch stopped: %s", "prefect.task_runs": "the image failed: %s"}


class UserErrorFilter(logging.Filter):
    """Rewrite an exception log of a `ComfyBatchError` into `sentence % message`, without the traceback."""

    def __init__(self, sentence: str) -> None:
        super().__init__()
        self.sentence = sentence

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ComfyBatchError):
            record.msg, record.args = self.sentence, (str(exc),)
            record.exc_info = record.exc_text = None
        return True


def quiet_user_errors() -> None:
    """Install the filters on Prefect's flow-run and task-run loggers once per process (idempotent)."""
    for name, sentence in _LOGGERS.items():
        logger = logging.getLogger(name)
        if not any(isinstance(existing, UserErrorFilter) for existing in logger.filters):
            logger.addFilter(UserErrorFilter(sentence))
