"""The one retry rule for Prefect task retries."""

from prefect import Task
from prefect.client.schemas.objects import State, TaskRun

from comfybatch.errors import is_retryable


async def retry_if_retryable(task: Task[..., object], task_run: TaskRun, state: State[object]) -> bool:
    """Retry only errors flagged retryable (lost servers, timeouts, OOM); never invalid workflows or bugs.

    Async on purpose: the task engine awaits it, and `State.result()` is dispatch-based in async code.
    """
    try:
        await state.aresult()
    except Exception as exc:  # the failed run's own exception, re-raised here to inspect it
        return is_retryable(exc)
    return False
