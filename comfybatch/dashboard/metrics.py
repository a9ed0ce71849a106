"""Counters the event hub keeps for `/metrics`: items by state, prompt seconds per server, batch durations.

They count what this dashboard process has seen since it started (Prometheus handles restarts of counters).
"""

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

from prefect.events.schemas.events import Event

from comfybatch.dashboard.schemas import TERMINAL_STATES


@dataclass
class Summary:
    """A Prometheus summary without quantiles: how many, and their sum."""

    count: int = 0
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.count += 1
        self.total += value


@dataclass
class EventMetrics:
    items: Counter[str] = field(default_factory=Counter)
    prompt_seconds: dict[str, Summary] = field(default_factory=dict)
    batch_seconds: dict[str, Summary] = field(default_factory=dict)  # by final state
    _running_since: dict[UUID, datetime] = field(default_factory=dict)

    def observe(self, event: Event, run_id: UUID | None) -> None:
        if event.event.startswith("comfybatch.item."):
            self.items[event.event.removeprefix("comfybatch.item.")] += 1
            seconds, server = event.payload.get("seconds"), event.payload.get("server")
            if isinstance(seconds, int | float) and isinstance(server, str):
                self.prompt_seconds.setdefault(server, Summary()).observe(float(seconds))
        elif event.event.startswith("prefect.flow-run.") and run_id is not None:
            state = (event.resource.get("prefect.state-type") or "").upper()
            if state == "RUNNING":
                self._running_since[run_id] = event.occurred
            elif state in TERMINAL_STATES and (began := self._running_since.pop(run_id, None)) is not None:
                seconds = (event.occurred - began).total_seconds()
                self.batch_seconds.setdefault(state.lower(), Summary()).observe(seconds)
