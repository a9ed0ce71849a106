"""Before any GPU time: resolve the workflow, probe the fleet, and decide which server can run which job."""

import asyncio
import statistics
from collections import defaultdict
from collections.abc import Awaitable, Collection, Coroutine, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from comfybatch.blocks.connection import client_for, session_for
from comfybatch.blocks.fleet import configured_servers, load_fleet
from comfybatch.blocks.server import ServerConfig
from comfybatch.comfy.intake import detect_format, load_workflow
from comfybatch.comfy.object_info import ObjectInfo
from comfybatch.comfy.preflight import check_workflow, split_problems
from comfybatch.comfy.workflow import ApiWorkflow
from comfybatch.errors import ComfyBatchError, NodeProblem, PlatformUnavailable
from comfybatch.models import JobResult, JobSpec, read_template
from comfybatch.problems import unreachable_line, why_unreachable
from comfybatch.settings import Settings

_T = TypeVar("_T")
_S = TypeVar("_S")


class ServerProbe(BaseModel):
    """What one server told us before the batch started."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    name: str
    reachable: bool
    comfyui_version: str | None = None
    error: str | None = Field(None, description="Why it did not answer, in words (`timed out`, `connection refused`).")


class FleetPlan(BaseModel):
    """Which servers may run which jobs, and what rules jobs out everywhere."""

    model_config = ConfigDict(frozen=True)

    servers: list[ServerProbe]
    eligible: dict[str, tuple[str, ...]] = Field(description="job key -> servers that accept it")
    invalid: dict[str, str] = Field(default_factory=dict, description="job key -> why no server can run it")

    @property
    def runnable(self) -> int:
        return sum(1 for servers in self.eligible.values() if servers)

    per_server: dict[str, int] = Field(default_factory=dict, description="server -> jobs it can run")
    estimate_s: float | None = None

    def summary_lines(self) -> list[str]:
        lines = [
            f"- {probe.name}: ComfyUI {probe.comfyui_version}, can run {self.per_server.get(probe.name, 0)} job(s)"
            for probe in self.servers
            if probe.reachable
        ]
        if down := {probe.name: probe.error or "no answer" for probe in self.servers if not probe.reachable}:
            lines.append(f"- {unreachable_line(down, len(self.servers))}")  # one line, however many are down
        if self.invalid:
            first = next(iter(self.invalid.values()))
            lines.append(f"- {len(self.invalid)} job(s) no server can run, e.g.: {first}")
        if self.estimate_s is not None:
            lines.append(f"- estimated run time: {self.estimate_s / 60:.1f} min")
        return lines


async def probe_fleet(
    servers: Sequence[ServerConfig], *, classes: Collection[str] | None = None
) -> tuple[list[ServerProbe], dict[str, ObjectInfo]]:
    """Ask every server for its version and `/object_info` (only `classes`, when given), in parallel; unreachable
    ones are noted. A batch's probe (`classes` given) goes through each server's session, whose connections then
    serve the batch's jobs."""

    async def probe(server: ServerConfig) -> tuple[ServerProbe, ObjectInfo | None]:
        try:
            async with client_for(server) if classes is None else session_for(server) as comfy:
                stats, info = await asyncio.gather(
                    comfy.get_system_stats(),
                    comfy.get_object_info(refresh=True) if classes is None else comfy.get_node_classes(classes),
                )
        except ComfyBatchError as exc:
            return ServerProbe(name=server.name, reachable=False, error=why_unreachable(exc)), None
        return ServerProbe(name=server.name, reachable=True, comfyui_version=stats.system.comfyui_version), info

    answers = await asyncio.gather(*(probe(server) for server in servers))
    return [probe for probe, _ in answers], {probe.name: info for probe, info in answers if info is not None}


def template_classes(source: str | dict[str, Any]) -> frozenset[str] | None:
    """The node classes of an API-format template: all a batch of it needs to know of each server. None for a
    UI-format graph (its conversion reads the whole `/object_info`) or one that cannot be read here."""
    try:
        data = read_template(source)
        if detect_format(data) != "api":
            return None
        return frozenset(str(node["class_type"]) for node in data.values())
    except (ComfyBatchError, OSError, KeyError, TypeError, AttributeError):
        return None  # the full probe, and the error where the template is resolved


def resolve_workflow(source: str | dict[str, Any], infos: dict[str, ObjectInfo]) -> ApiWorkflow:
    """The batch's API-format template; a UI-format graph is converted with a reachable server's `/object_info`."""
    reference = next(iter(infos.values()), None)
    return load_workflow(read_template(source), reference)


def plan_fleet(
    jobs: Sequence[JobSpec], probes: list[ServerProbe], infos: dict[str, ObjectInfo],
    history: Sequence[JobResult] = (), slots: dict[str, int] | None = None,
) -> FleetPlan:  # fmt: skip
    """Check each distinct graph shape once per group of servers with the same `/object_info` (a fleet of alike
    servers is one group: 2,000 jobs on 8 servers were 16,000 checks)."""
    eligible: dict[str, list[str]] = defaultdict(list)
    invalid: dict[str, str] = {}
    alike: list[tuple[ObjectInfo, list[str]]] = []
    for server, info in infos.items():
        group = next((names for known, names in alike if known == info), None)
        if group is None:
            alike.append((info, [server]))
        else:
            group.append(server)
    for info, names in alike:
        verdicts: dict[tuple[Any, ...], list[tuple[str, str | None]]] = {}  # shape -> (server, why not) each
        for job in jobs:
            shape = _shape(job.workflow, info)
            if shape not in verdicts:
                problems = check_workflow(job.workflow, info)
                verdicts[shape] = [(server, _verdict(problems, server)) for server in names]
            for server, why in verdicts[shape]:
                if why is None:
                    eligible[job.key].append(server)
                elif job.key not in invalid or why.startswith("workflow"):
                    invalid[job.key] = why
    per_server = {server: sum(server in names for names in eligible.values()) for server in infos}
    return FleetPlan(
        servers=probes, eligible={job.key: tuple(eligible.get(job.key, ())) for job in jobs},
        invalid={key: why for key, why in invalid.items() if not eligible.get(key)},
        per_server=per_server, estimate_s=_estimate(len(jobs), history, slots or {}),
    )  # fmt: skip


def _shape(workflow: ApiWorkflow, info: ObjectInfo) -> tuple[Any, ...]:
    # What decides eligibility: node classes and combo values (models, samplers). Prompts, seeds
    # and sizes were already checked per job against the input specs by expansion.
    shape: list[Any] = []
    for node_id in workflow.node_ids:
        class_type = workflow.class_type(node_id)
        shape.append((node_id, class_type))
        if not info.has_class(class_type):
            continue
        for name, value in workflow.string_inputs(node_id):
            if info.combo_options(class_type, name) is not None:
                shape.append((node_id, name, value))
    return tuple(shape)


def _verdict(problems: list[NodeProblem], server: str) -> str | None:
    """None when the server accepts the graph, else why not (a wrong workflow is wrong everywhere)."""
    if not problems:
        return None
    split = split_problems(problems)
    if split.workflow_wrong:
        return "workflow: " + "; ".join(str(problem) for problem in split.workflow_wrong[:3])
    return f"{server} lacks: " + "; ".join(str(problem) for problem in split.server_lacks[:3])


def _estimate(count: int, history: Sequence[JobResult], slots: dict[str, int]) -> float | None:
    durations = [r.finished_at - r.started_at for r in history if r.finished_at and r.started_at]
    return estimate_run_s(count, durations, servers=len(slots))


def estimate_run_s(count: int, prompt_seconds: Sequence[float], *, servers: int) -> float | None:
    """How long `count` prompts take on `servers` servers at the median of `prompt_seconds` (None without any)."""
    if not prompt_seconds or servers < 1 or count < 1:
        return None
    return statistics.median(prompt_seconds) * count / servers  # one prompt executes per server at a time


async def load_and_probe(
    settings: Settings, *, only: Sequence[str], classes: Collection[str] | None = None, writes_beside: bool = False
) -> tuple[list[ServerConfig], list[ServerProbe], dict[str, ObjectInfo]]:
    """The fleet and what each server says. Configured servers are probed while the fleet syncs to Prefect
    (block and limit writes), so the two round trips overlap; servers known only from blocks are probed after.
    `writes_beside`: see `load_fleet`.

    Raises:
        ConfigError when the fleet is empty or no server answers.
    """
    configured = [server for server in configured_servers(settings) if not only or server.name in only]
    servers, (early_probes, infos) = await beside(
        load_fleet(settings, only=only, writes_beside=writes_beside), probe_fleet(configured, classes=classes)
    )
    by_name = {probe.name: probe for probe, server in zip(early_probes, configured, strict=True) if server in servers}
    late_probes, late_infos = await probe_fleet([server for server in servers if server.name not in by_name],
                                                classes=classes)  # fmt: skip
    by_name.update({probe.name: probe for probe in late_probes})
    infos = {name: info for name, info in (infos | late_infos).items() if name in by_name}
    probes = [by_name[server.name] for server in servers]
    if not infos:
        down = {probe.name: probe.error or "no answer" for probe in probes}
        raise PlatformUnavailable(f"no ComfyUI server is reachable: {unreachable_line(down, len(probes))}")
    return servers, probes, infos


async def beside(main: Awaitable[_T], side: Coroutine[Any, Any, _S]) -> tuple[_T, _S]:
    """Await `main` while `side` runs alongside. Unlike a TaskGroup's, `main`'s errors come out ungrouped
    (callers catch ConfigError and friends); `side` is cancelled then."""
    task = asyncio.create_task(side)
    try:
        result = await main
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise
    return result, await task
