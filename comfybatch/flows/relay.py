"""A sharded batch's images, told in the batch's own event stream.

Shards are child flow runs: their engines number their events under their own runs, which no dashboard streams.
The batch's run follows them and reads the journal they share; each job the journal newly records becomes that
run's `item.running` / `item.done` / `item.failed` event, numbered by the batch's run like any of its own.
"""

import logging
from collections.abc import Sequence

from comfybatch.models import JobSpec
from comfybatch.records import JobJournal, JobRecord
from comfybatch.tasks.events import emit_item_event

logger = logging.getLogger(__name__)


class JournalRelay:
    """Tells each job's newly recorded state once (states recorded before `start` were told by an earlier run)."""

    def __init__(self, journal: JobJournal, jobs: Sequence[JobSpec]) -> None:
        self.journal = journal
        self.jobs = {job.key: job for job in jobs}
        self.known: dict[str, JobRecord] = {}

    async def start(self) -> None:
        self.known = await self.journal.load()

    async def relay(self) -> int:
        """Emit an event per record that changed since the last call; returns how many. Never fails the batch: a
        journal it cannot read now is read at the next call."""
        try:
            records = await self.journal.load(self.known)  # finished records are taken as known: one read each
        except Exception as exc:
            logger.warning("the batch's stream misses the shards' latest images for now: %s", exc)
            return 0
        told = 0
        for key, record in records.items():
            if (job := self.jobs.get(key)) is None or self.known.get(key) == record:
                continue
            told += 1
            result = record.result
            if result is None:
                emit_item_event(job, "running", server=record.server)
            elif result.status == "done":
                emit_item_event(job, "done", server=result.server, prompt_id=result.prompt_id,
                                gpu_seconds=result.gpu_seconds, files=[file.uri for file in result.files])  # fmt: skip
            elif result.status == "failed":
                emit_item_event(job, "failed", error=result.error or "failed")
        self.known = records
        return told
