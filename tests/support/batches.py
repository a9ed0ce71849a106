"""Batch requests over the test nodes, each job with its own nonce (no ComfyUI cache hits)."""

import json
import uuid
from pathlib import Path
from typing import Any

from comfybatch.local.fleet import LocalComfyServer
from comfybatch.models import BatchSpec, JobSpec, Sweep
from comfybatch.testing.fleet import journal_path


def journal_job(index: int, batch: str = "b") -> JobSpec:
    """Job `k<index>` of a one-node graph: for the journal and what reads it (no server runs it)."""
    graph = {"1": {"class_type": "EmptyImage", "inputs": {}}}
    return JobSpec(batch=batch, index=index, key=f"k{index}", item=index, values={}, workflow=graph)


def through_graph(node: str, **inputs: Any) -> dict[str, Any]:
    """EmptyImage(16x16) -> <node>(nonce bound per job) -> SaveImage."""
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": 0}},
        "2": {"class_type": node, "inputs": {"image": ["1", 0], "nonce": "", **inputs}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }


def nonces(name: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"{name}-{run}-{index}" for index in range(count)]


def delay_spec(name: str, *, seconds: float, count: int, servers: list[str], **fields: Any) -> BatchSpec:
    """`count` jobs of the Delay node, one per nonce."""
    return node_spec(name, through_graph("ComfybatchDelay", seconds=seconds), count=count, servers=servers, **fields)


def node_spec(name: str, graph: dict[str, Any], *, count: int, servers: list[str], **fields: Any) -> BatchSpec:
    """`count` jobs of a `through_graph`, one per nonce (the manifest's `param.nonce`)."""
    return BatchSpec(
        name=name, workflow=graph, bindings={"nonce": "2.inputs.nonce"},
        sweep=Sweep(axes={"nonce": list(nonces(name, count))}), servers=servers, **fields,
    )  # fmt: skip


def spec_nonces(spec: BatchSpec) -> list[str]:
    """The nonces of a `node_spec` or `delay_spec`, in job order."""
    return [str(nonce) for nonce in spec.sweep.axes["nonce"]]


def executions(*servers: LocalComfyServer, outcome: str = "ok") -> dict[str, int]:
    """How often each nonce ran with `outcome`, across the servers' node journals."""
    counts: dict[str, int] = {}
    for server in servers:
        if not journal_path(server).exists():
            continue
        for line in journal_path(server).read_text().splitlines():
            entry = json.loads(line)
            if entry.get("outcome") == outcome:
                counts[entry["nonce"]] = counts.get(entry["nonce"], 0) + 1
    return counts


def finished_records(batch_dir: Path) -> int:
    """Jobs of the batch whose outputs are stored (journal records in the finished state)."""
    return _records(batch_dir, "finished")


def submitted_records(batch_dir: Path) -> int:
    """Jobs of the batch queued on a server and not yet stored."""
    return _records(batch_dir, "submitted")


def _records(batch_dir: Path, state: str) -> int:
    folder = batch_dir / ".jobs"
    if not folder.is_dir():
        return 0
    return sum(f'"state":"{state}"' in path.read_text() for path in folder.glob("*.json"))
