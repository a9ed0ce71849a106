"""A flow run that fails for a reason of ours (a wrong request, sheet or workflow, no server) logs one sentence in the
Prefect UI, not a Python traceback: tracebacks are kept for bugs (exceptions that are not ours)."""

import logging

from comfybatch.errors import ComfyBatchError

_FLOW_RUN_LOGGER = "prefect.flow_runs"  # Prefect's engine logs "Encountered exception during execution" here


class UserErrorFilter(logging.Filter):
    """Rewrite an exception log of a `ComfyBatchError` into its message, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, ComfyBatchError):
            record.msg, record.args = "the batch stopped: %s", (str(exc),)
            record.exc_info = record.exc_text = None
        return True


def quiet_user_errors() -> None:
    """Install the filter on Prefect's flow-run logger once per process (idempotent)."""
    logger = logging.getLogger(_FLOW_RUN_LOGGER)
    if not any(isinstance(existing, UserErrorFilter) for existing in logger.filters):
        logger.addFilter(UserErrorFilter())
