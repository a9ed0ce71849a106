"""Flow-run processes forked from a warm server instead of spawned cold.

Prefect's runner starts each served flow run with `run_flow_in_subprocess`: a `spawn`ed Python that imports
Prefect and comfybatch afresh (about 1.8 CPU-seconds here, several seconds of wall clock on a busy machine)
before the flow's first line. Here the same call runs in a process forked from a `forkserver` that imported
them once, when serve started, ahead of demand. Each flow run still gets its own process, so Prefect's
runner keeps everything else: one flow run per batch in the UI, its process map, the control channel that
delivers the cancel intent before SIGTERM (so `on_cancellation` hooks run), kill on cancel and on shutdown.

`prefect.runner._starter_direct.run_flow_in_subprocess` is the module-level reference that starter documents
as its override point; `use_warm_processes` points it here. The body below is Prefect 3.9's
`prefect.flow_engine.run_flow_in_subprocess` with the start method changed (tests/platform/test_trigger.py
runs it against the installed Prefect).
"""

import asyncio
import multiprocessing
import multiprocessing.context
import os
from functools import wraps
from typing import Any, cast

import prefect.runner._starter_direct as direct_starter
from prefect.client.schemas.objects import FlowRun
from prefect.context import SettingsContext, get_settings_context, serialize_context
from prefect.engine import handle_engine_signals
from prefect.flow_engine import (
    _CONTROL_CHANNEL_ENV_KEYS,
    _run_serialized_call_with_control_bootstrap,
    _runtime_subprocess_env,
)
from prefect.flows import Flow
from prefect.settings.context import get_current_settings
from prefect.settings.models.root import Settings
from prefect.utilities.callables import cloudpickle_wrapped_call
from prefect.utilities.processutils import sanitize_subprocess_env

# What every flow run imports, loaded once in the fork server: the flows, Prefect's engines, and what a run
# otherwise imports on its way (measured with PYTHONPROFILEIMPORTTIME in the forked processes: ~80 ms a run).
# `comfybatch.cli` is serve's main module, which multiprocessing re-runs in each child as `__mp_main__`.
PRELOAD = [
    "prefect.flow_engine", "prefect.task_engine", "prefect.utilities.visualization", "prefect.concurrency.asyncio",
    "comfybatch.flows.batch", "comfybatch.flows.inbox", "comfybatch.cli", "anyio.streams.tls",
    "anyio.streams.memory", "PIL.PngImagePlugin", "pyarrow.parquet", "pyarrow.dataset", "pandas.io.formats.csvs",
]  # fmt: skip


def use_warm_processes() -> None:
    """Start the fork server now (it imports `PRELOAD` while serve waits for work) and have the runner's
    direct starter fork flow-run processes from it."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    from multiprocessing import forkserver

    forkserver.ensure_running()
    setattr(direct_starter, "run_flow_in_subprocess", run_flow_in_warm_process)  # noqa: B010  # its override point


def run_flow_in_warm_process(
    flow: Flow[..., Any], flow_run: FlowRun | None = None, env: dict[str, str | None] | None = None
) -> multiprocessing.context.ForkServerProcess:
    """Prefect's `run_flow_in_subprocess(flow, flow_run=..., env=...)`, in a process from the fork server."""
    from prefect.flow_engine import run_flow

    @wraps(run_flow)
    def run_flow_with_env(
        *args: Any, env: dict[str, str | None] | None = None, remove_env: set[str] | None = None, **kwargs: Any
    ) -> None:
        for key in remove_env or ():
            os.environ.pop(key, None)
        os.environ.update(_runtime_subprocess_env(env))
        settings_context = get_settings_context()
        with (
            SettingsContext(profile=settings_context.profile, settings=Settings()),
            handle_engine_signals(getattr(flow_run, "id", None)),
        ):
            maybe_coro = run_flow(*args, **kwargs)
            if asyncio.iscoroutine(maybe_coro):
                asyncio.run(maybe_coro)

    settings_env: dict[str, str | None] = dict(get_current_settings().to_environment_variables(exclude_unset=True))
    merged_env: dict[str, str | None] = (
        settings_env | dict(os.environ) | {"PREFECT__ENABLE_CANCELLATION_AND_CRASHED_HOOKS": "false"} | (env or {})
    )
    sanitized = sanitize_subprocess_env(merged_env)
    startup_env = {key: value for key, value in sanitized.items() if key in _CONTROL_CHANNEL_ENV_KEYS}
    wrapped_call = cloudpickle_wrapped_call(
        run_flow_with_env, env=_runtime_subprocess_env(sanitized),
        remove_env={key for key, value in merged_env.items() if value is None},
        flow=flow, flow_run=flow_run, parameters=None, wait_for=None, context=serialize_context(),
    )  # fmt: skip
    process = multiprocessing.get_context("forkserver").Process(
        target=_run_serialized_call_with_control_bootstrap,
        args=(cast(bytes, wrapped_call.args[0]), startup_env),  # type: ignore[attr-defined]
    )
    process.start()
    return process
