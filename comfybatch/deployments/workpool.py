"""`prefect.yaml` written from the catalogue: the same deployments, on the `comfybatch` process work pool.

`prefect deploy --all` reads that file on the machines of `deploy/` (workers pull nothing: the entrypoints are
module paths of the installed package). It is generated, never edited: after changing `catalog.py`, run
`python -m comfybatch.deployments.workpool > prefect.yaml` (a unit test keeps the committed file equal to this
output). The schedule is the one of the default settings.
"""

import json
import re
from datetime import timedelta
from typing import Any

import prefect
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.client.schemas.schedules import CronSchedule, IntervalSchedule

from comfybatch.deployments.catalog import Served, catalog
from comfybatch.settings import Settings

POOL = "comfybatch"
_HEADER = """\
# Generated from comfybatch/deployments/catalog.py: edit the catalogue, then run
#   python -m comfybatch.deployments.workpool > prefect.yaml
# Work-pool deployments for running comfybatch on several machines (see deploy/README.md).
#   prefect work-pool create comfybatch --type process
#   prefect deploy --all                 # from this folder, with PREFECT_API_URL set
#   prefect worker start --pool comfybatch --limit 4     # on every machine that has `pip install comfybatch`
# Entrypoints are module paths, so workers need the installed package, not this folder.
"""
_PLAIN = re.compile(r"[A-Za-z0-9_][\w./:-]*")  # needs no quotes in YAML (no space, no `: `, no leading `*`)


def prefect_yaml() -> str:
    """The text of `prefect.yaml`: every deployment of the catalogue (default settings) on the work pool."""
    lines = [_HEADER.rstrip("\n"), f"name: {POOL}", f"prefect-version: {prefect.__version__}", "", "pull: []", "",
             "deployments:"]  # fmt: skip
    for served in catalog(Settings.model_construct()):  # the defaults, not this machine's environment
        lines += _deployment(served)
    return "\n".join(lines) + "\n"


def _deployment(served: Served) -> list[str]:
    options = dict(served.options)
    lines = [f"  - name: {_scalar(options.pop('name'))}",
             f"    entrypoint: {served.flow.fn.__module__}:{served.flow.fn.__name__}"]  # fmt: skip
    if "description" in options:
        lines.append(f"    description: {_scalar(options.pop('description'))}")
    if "tags" in options:
        lines.append(f"    tags: [{', '.join(_scalar(tag) for tag in options.pop('tags'))}]")
    if "concurrency_limit" in options:
        limit: ConcurrencyLimitConfig = options.pop("concurrency_limit")
        lines += ["    concurrency_limit:", f"      limit: {limit.limit}"]
        if limit.collision_strategy is not None:
            lines.append(f"      collision_strategy: {limit.collision_strategy.value}")
    if "schedules" in options:
        lines.append("    schedules:")
        for schedule in options.pop("schedules"):
            lines += _schedule(schedule)
    if options:  # a catalogue option this file would silently drop: teach it here first
        raise ValueError(f"prefect.yaml cannot express {sorted(options)} of deployment {served.options['name']}")
    return [*lines, "    work_pool:", f"      name: {POOL}"]


def _schedule(schedule: Any) -> list[str]:
    if isinstance(schedule, CronSchedule):
        return [f"      - cron: {_scalar(schedule.cron)}", f"        timezone: {_scalar(schedule.timezone or 'UTC')}"]
    if isinstance(schedule, IntervalSchedule) and isinstance(schedule.interval, timedelta):
        return [f"      - interval: {schedule.interval.total_seconds():g}"]
    raise ValueError(f"prefect.yaml cannot express the schedule {schedule!r}")


def _scalar(value: str) -> str:
    return value if _PLAIN.fullmatch(value) else json.dumps(value)  # a JSON string is a YAML string


if __name__ == "__main__":
    print(prefect_yaml(), end="")
