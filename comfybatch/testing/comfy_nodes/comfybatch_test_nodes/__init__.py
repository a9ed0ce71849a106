"""ComfyUI custom nodes that model slow, failing, flaky, hung and crashing jobs for comfybatch tests.

This package is copied or symlinked into a ComfyUI `custom_nodes/` folder and imported by the
ComfyUI server process, so it imports only the standard library and ComfyUI, never comfybatch
(`shared/docs/test-comfyui.md` §4).

Every node takes an `image` (IMAGE) and a `nonce` (STRING) input and passes the image through;
tests set a fresh nonce per job so identical graphs are not answered from ComfyUI's cache.

| Node | Extra inputs | Behaviour |
|---|---|---|
| ComfybatchDelay | seconds FLOAT | sleeps in 0.1 s ticks with ProgressBar updates (interruptible) |
| ComfybatchFail | message STRING | raises RuntimeError(message) |
| ComfybatchFlaky | key STRING, failures INT, state_dir STRING | fails the first `failures` runs per key |
| ComfybatchHang | seconds FLOAT, report_progress BOOLEAN, only_on_port INT | long sleep; progress only if asked |
| ComfybatchCrash | after_seconds FLOAT, exit_code INT | `os._exit(exit_code)` after the delay |

Execution journal: when the environment variable `COMFYBATCH_TEST_NODE_LOG` names a file, every
execution appends one JSON line (a single `os.write` on an `O_APPEND` descriptor):
`{"node", "nonce", "pid", "port", "prompt_id", "node_id", "start", "end", "outcome"}` with
`start`/`end` from `time.time()` and `outcome` one of `ok`, `error`, `interrupted` or `crash`
(Crash writes its line, with `exit_code`, just before the process exits).
"""

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import comfy.model_management
import comfy.utils

JOURNAL_ENV = "COMFYBATCH_TEST_NODE_LOG"
TICK_S = 0.1
CATEGORY = "comfybatch/testing"

_log = logging.getLogger(__name__)

_IMAGE: tuple[str, dict[str, Any]] = ("IMAGE", {})
_NONCE: tuple[str, dict[str, Any]] = ("STRING", {"default": "", "multiline": False})


def _server_port() -> int | None:
    """The port this ComfyUI process listens on, from its parsed command line."""
    try:
        from comfy.cli_args import args

        return int(args.port)
    except (ImportError, AttributeError, TypeError, ValueError):
        return None


def _executing_ids() -> tuple[str | None, str | None]:
    """(prompt_id, node_id) of the running node, when ComfyUI exposes them."""
    try:
        from comfy_execution.utils import get_executing_context
    except ImportError:
        return None, None
    context = get_executing_context()
    if context is None:
        return None, None
    return context.prompt_id, context.node_id


def _journal(node: str, nonce: str, start: float, outcome: str, **extra: Any) -> None:
    path = os.environ.get(JOURNAL_ENV)
    if not path:
        return
    prompt_id, node_id = _executing_ids()
    entry: dict[str, Any] = {"node": node, "nonce": nonce, "pid": os.getpid()}
    port = _server_port()
    if port is not None:
        entry["port"] = port
    entry.update(prompt_id=prompt_id, node_id=node_id, start=start, end=time.time(), outcome=outcome)
    entry.update(extra)
    line = (json.dumps(entry, sort_keys=True) + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
    except OSError:
        _log.exception("comfybatch test nodes: cannot append to journal %s", path)


def _journaled(node: str, nonce: str, run: Callable[[], tuple[Any, ...]]) -> tuple[Any, ...]:
    """Run a node body and journal its outcome (interrupts and errors are re-raised)."""
    start = time.time()
    outcome = "error"
    try:
        result = run()
        outcome = "ok"
        return result
    except comfy.model_management.InterruptProcessingException:
        outcome = "interrupted"
        raise
    finally:
        _journal(node, nonce, start, outcome)


def _sleep_ticking(seconds: float) -> None:
    """Sleep `seconds` in TICK_S ticks (the last one shorter), reporting progress after each.

    Each tick checks ComfyUI's interrupt flag, so `POST /interrupt` ends the sleep within a tick.
    """
    ticks = max(1, math.ceil(seconds / TICK_S - 1e-9))
    bar = comfy.utils.ProgressBar(ticks)
    began = time.monotonic()
    for tick in range(1, ticks + 1):
        remaining = began + min(tick * TICK_S, seconds) - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        comfy.model_management.throw_exception_if_processing_interrupted()
        bar.update(1)


class ComfybatchDelay:
    """Sleep for `seconds` with progress: GPU time that costs no CPU."""

    DESCRIPTION = "Sleeps in 0.1 s ticks with progress updates (interruptible); passes the image through."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _IMAGE,
                "seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0, "step": 0.01}),
                "nonce": _NONCE,
            }
        }

    def run(self, image: Any, seconds: float, nonce: str) -> tuple[Any, ...]:
        def body() -> tuple[Any, ...]:
            _sleep_ticking(seconds)
            return (image,)

        return _journaled("ComfybatchDelay", nonce, body)


class ComfybatchFail:
    """Raise `RuntimeError(message)`: an `execution_error` with a known message."""

    DESCRIPTION = "Always raises RuntimeError(message)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _IMAGE,
                "message": ("STRING", {"default": "comfybatch test failure", "multiline": False}),
                "nonce": _NONCE,
            }
        }

    def run(self, image: Any, message: str, nonce: str) -> tuple[Any, ...]:
        def body() -> tuple[Any, ...]:
            raise RuntimeError(message)

        return _journaled("ComfybatchFail", nonce, body)


def _count_run(state_dir: str, key: str) -> int:
    """Increment and return the number of runs recorded for `key` (1 on the first run)."""
    os.makedirs(state_dir, exist_ok=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    path = os.path.join(state_dir, f"comfybatch-flaky-{digest}.count")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 64).strip()
        runs = (int(raw) if raw else 0) + 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(runs).encode())
        return runs
    finally:
        os.close(fd)


class ComfybatchFlaky:
    """Fail the first `failures` runs for `key`, then pass (the count lives in `state_dir`)."""

    DESCRIPTION = (
        "Raises torch.OutOfMemoryError (the typical transient GPU failure) on the first `failures` runs for `key`, "
        "then passes the image through."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _IMAGE,
                "key": ("STRING", {"default": "flaky", "multiline": False}),
                "failures": ("INT", {"default": 1, "min": 0, "max": 1000, "step": 1}),
                "state_dir": ("STRING", {"default": "", "multiline": False}),
                "nonce": _NONCE,
            }
        }

    def run(self, image: Any, key: str, failures: int, state_dir: str, nonce: str) -> tuple[Any, ...]:
        def body() -> tuple[Any, ...]:
            if not state_dir:
                raise ValueError("ComfybatchFlaky needs a state_dir")
            runs = _count_run(state_dir, key)
            if runs <= failures:
                import torch  # ComfyUI's own torch: report what a GPU running out of memory reports

                raise torch.OutOfMemoryError(f"ComfybatchFlaky: planned failure {runs} of {failures} for key {key!r}")
            return (image,)

        return _journaled("ComfybatchFlaky", nonce, body)


class ComfybatchHang:
    """Sleep a long time; silent (a stuck kernel) unless `report_progress` is on."""

    DESCRIPTION = (
        "Sleeps `seconds`. With report_progress it ticks progress and can be interrupted; "
        "without it emits nothing and only a process kill ends it early. With only_on_port, only the "
        "server listening on that port hangs; elsewhere the image passes straight through."
    )
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _IMAGE,
                "seconds": ("FLOAT", {"default": 3600.0, "min": 0.0, "max": 86400.0, "step": 0.01}),
                "report_progress": ("BOOLEAN", {"default": False}),
                "nonce": _NONCE,
            },
            # One graph for the whole fleet, one broken server: the fault follows the server, not the job.
            "optional": {"only_on_port": ("INT", {"default": 0, "min": 0, "max": 65535, "step": 1})},
        }

    def run(
        self, image: Any, seconds: float, report_progress: bool, nonce: str, only_on_port: int = 0
    ) -> tuple[Any, ...]:
        def body() -> tuple[Any, ...]:
            if only_on_port and only_on_port != _server_port():
                return (image,)
            if report_progress:
                _sleep_ticking(seconds)
            else:
                time.sleep(seconds)
            return (image,)

        return _journaled("ComfybatchHang", nonce, body)


class ComfybatchCrash:
    """End the server process with `os._exit(exit_code)` after `after_seconds`."""

    DESCRIPTION = "Sleeps after_seconds, then kills the ComfyUI process with os._exit(exit_code)."
    CATEGORY = CATEGORY
    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "image": _IMAGE,
                "after_seconds": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 3600.0, "step": 0.01}),
                "exit_code": ("INT", {"default": 1, "min": 0, "max": 255, "step": 1}),
                "nonce": _NONCE,
            }
        }

    def run(self, image: Any, after_seconds: float, exit_code: int, nonce: str) -> tuple[Any, ...]:
        start = time.time()
        time.sleep(after_seconds)
        _journal("ComfybatchCrash", nonce, start, "crash", exit_code=exit_code)
        _log.warning("ComfybatchCrash: exiting the process with code %d", exit_code)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(exit_code)


NODE_CLASS_MAPPINGS = {
    "ComfybatchDelay": ComfybatchDelay,
    "ComfybatchFail": ComfybatchFail,
    "ComfybatchFlaky": ComfybatchFlaky,
    "ComfybatchHang": ComfybatchHang,
    "ComfybatchCrash": ComfybatchCrash,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ComfybatchDelay": "Comfybatch Delay",
    "ComfybatchFail": "Comfybatch Fail",
    "ComfybatchFlaky": "Comfybatch Flaky",
    "ComfybatchHang": "Comfybatch Hang",
    "ComfybatchCrash": "Comfybatch Crash",
}
