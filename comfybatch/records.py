"""The batch record in the output store: the plan (every job, written once before the first prompt) and the
per-job journal (what was submitted where, and what finished).

The journal is written before `POST /prompt` (server + prompt_id) and after the outputs are stored, so a rerun
after any crash knows which jobs are done and which prompt to recover instead of regenerating. The plan lets
anyone (the dashboard, an ending hook in another process) list every job without expanding the batch again.
"""

import asyncio
import io
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pandas as pd  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from comfybatch.models import JobResult, JobSpec
from comfybatch.outputs.storage import OutputStore


class JobRecord(BaseModel):
    """The durable state of one job (by item key)."""

    model_config = ConfigDict(frozen=True)

    key: str
    state: Literal["submitted", "finished"]
    server: str | None = None
    prompt_id: str | None = None
    submitted_at: float | None = None
    lease_id: str | None = Field(None, description="The Prefect slot lease held for it, adopted on recovery.")
    result: JobResult | None = None


class JobJournal:
    """Job records of one batch under `<batch_dir>/.jobs/<key>.json`."""

    def __init__(self, store: OutputStore, batch_dir: str) -> None:
        self.store = store
        self.folder = f"{batch_dir}/.jobs"

    def _path(self, key: str) -> str:
        return f"{self.folder}/{key}.json"

    async def submitted(self, job: JobSpec, *, server: str, prompt_id: str, lease_id: str | None = None) -> None:
        record = JobRecord(key=job.key, state="submitted", server=server, prompt_id=prompt_id, submitted_at=time.time(),
                           lease_id=lease_id)  # fmt: skip
        await self._write(record)

    async def finished(self, result: JobResult) -> None:
        await self._write(JobRecord(key=result.job.key, state="finished", server=result.server,
                                    prompt_id=result.prompt_id, result=result))  # fmt: skip

    async def load(self, known: Mapping[str, JobRecord] | None = None) -> dict[str, JobRecord]:
        """Every readable record; unreadable ones (a torn write on a crash) are ignored.

        Finished records in `known` are taken as they are (pass only those that no longer change: a done job's), so
        a reader that polls a big batch reads only the files of jobs still in flight.
        """
        return await asyncio.to_thread(self._load_sync, known or {})

    def _load_sync(self, known: Mapping[str, JobRecord]) -> dict[str, JobRecord]:
        records: dict[str, JobRecord] = {}
        for relpath in self.store.list(self.folder):
            if not relpath.endswith(".json"):
                continue
            cached = known.get(relpath.rpartition("/")[2].removesuffix(".json"))
            if cached is not None and cached.state == "finished":
                records[cached.key] = cached
                continue
            try:
                record = JobRecord.model_validate_json(self.store.read_bytes(relpath))
            except ValidationError:
                continue
            records[record.key] = record
        return records

    async def _write(self, record: JobRecord) -> None:
        await asyncio.to_thread(self.store.write_bytes, self._path(record.key), record.model_dump_json().encode())


PLAN_FILE = ".batch/plan.parquet"
_PLAN_COLUMNS = ("index", "key", "item", "image", "row", "seed", "label", "values_json", "eligible_json")


def write_plan(
    store: OutputStore, batch_dir: str, jobs: Sequence[JobSpec], eligible: Mapping[str, Sequence[str]]
) -> None:
    """Store every job of the batch (without its graph) and the servers that can run it; written once per folder
    (a resumed batch has the same jobs: its identity is its request)."""
    relpath = f"{batch_dir}/{PLAN_FILE}"
    if store.exists(relpath):
        return
    rows = [
        (job.index, job.key, job.item, job.image, job.row, job.seed, job.label,
         json.dumps(job.values, sort_keys=True), json.dumps(list(eligible.get(job.key, ()))))
        for job in jobs
    ]  # fmt: skip
    frame = pd.DataFrame(rows, columns=list(_PLAN_COLUMNS)).astype({"row": "Int64", "seed": "Int64"})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    store.write_bytes(relpath, buffer.getvalue())


def read_plan(store: OutputStore, batch_dir: str, *, batch: str) -> list[JobSpec] | None:
    """The stored jobs in order, or None before the flow wrote them. Their `workflow` is not stored: these jobs
    describe (manifest, dashboard), they are never submitted (`model_construct` leaves `workflow` unset)."""
    relpath = f"{batch_dir}/{PLAN_FILE}"
    if not store.exists(relpath):
        return None
    frame = pd.read_parquet(io.BytesIO(store.read_bytes(relpath)))
    return [JobSpec.model_construct(**_planned_fields(row, batch)) for row in frame.itertuples(index=False)]


def _planned_fields(row: Any, batch: str) -> dict[str, Any]:
    return {"batch": batch, "index": int(row.index), "key": str(row.key), "item": int(row.item),
            "image": int(row.image), "row": None if pd.isna(row.row) else int(row.row),
            "seed": None if pd.isna(row.seed) else int(row.seed), "label": str(row.label),
            "values": json.loads(row.values_json)}  # fmt: skip
