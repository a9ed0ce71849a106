"""The dashboard's Prometheus metrics through `prometheus-client`: what the event hub saw (items by state, prompt
seconds per server, GPU-seconds per server and API key, batch seconds by final state), API latency per route, and the
fleet's gauges read per scrape.

Counters and histograms count what this dashboard process has seen since it started (Prometheus handles restarts
of counters); each app has its own registry, so two apps in one process never share samples.
"""

import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from uuid import UUID

from prefect.events.schemas.events import Event
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from comfybatch.dashboard.schemas import TERMINAL_STATES
from comfybatch.run_tags import EVENT_TAG_PREFIX, SUBMITTED_BY

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROMPT_BUCKETS_S = (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
BATCH_BUCKETS_S = (5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0)
API_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_RECENT_PROMPTS = 200
_RUNNING_KEPT = 10_000  # runs seen start and not seen end: bounded, a dashboard lives for months
_KEY_TAG = EVENT_TAG_PREFIX + SUBMITTED_BY  # every event of a run is related to its tags


class EventMetrics:
    """This process's counters and histograms, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.items = Counter("comfybatch_item_events", "Item state changes seen since the dashboard started.",
                             ["state"], registry=self.registry)  # fmt: skip
        self.prompt_seconds = Histogram(
            "comfybatch_prompt_seconds", "Prompt run time (submit to outputs stored), per server.", ["server"],
            buckets=PROMPT_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.gpu_seconds = Counter(
            "comfybatch_gpu_seconds", "ComfyUI execution time of rendered images (its own start and success "
            "times), per server and API key (empty: not submitted through the API).", ["server", "key"],
            registry=self.registry,
        )  # fmt: skip
        self.batch_seconds = Histogram(
            "comfybatch_batch_seconds", "Batch run time (running to final state), per final state.", ["state"],
            buckets=BATCH_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self.api_seconds = Histogram(
            "comfybatch_api_request_seconds", "Dashboard request time (to the end of the response), per route.",
            ["method", "route"], buckets=API_BUCKETS_S, registry=self.registry,
        )  # fmt: skip
        self._running_since: dict[UUID, datetime] = {}
        # The fleet's latest prompt times (any batch): a dry run of a new request is estimated from them.
        self.recent_prompt_s: deque[float] = deque(maxlen=_RECENT_PROMPTS)

    def observe(self, event: Event, run_id: UUID | None) -> None:
        if event.event.startswith("comfybatch.item."):
            self.items.labels(state=event.event.removeprefix("comfybatch.item.")).inc()
            seconds, server = event.payload.get("seconds"), event.payload.get("server")
            if isinstance(seconds, int | float) and isinstance(server, str):
                self.recent_prompt_s.append(float(seconds))
                self.prompt_seconds.labels(server=server).observe(float(seconds))
            gpu_seconds = event.payload.get("gpu_seconds")
            if event.event.endswith(".done") and isinstance(gpu_seconds, int | float) and isinstance(server, str):
                self.gpu_seconds.labels(server=server, key=key_of(event)).inc(max(float(gpu_seconds), 0.0))
        elif event.event.startswith("prefect.flow-run.") and run_id is not None:
            state = (event.resource.get("prefect.state-type") or "").upper()
            if state == "RUNNING":
                self._running_since[run_id] = event.occurred
                while len(self._running_since) > _RUNNING_KEPT:
                    del self._running_since[next(iter(self._running_since))]
            elif state in TERMINAL_STATES and (began := self._running_since.pop(run_id, None)) is not None:
                seconds = (event.occurred - began).total_seconds()
                self.batch_seconds.labels(state=state.lower()).observe(seconds)

    def exposition(self, gauges: Iterable[Metric] = ()) -> bytes:
        """The text format of this registry plus `gauges` read for this scrape."""
        scrape = CollectorRegistry()
        scrape.register(_Gauges(list(gauges)))
        return generate_latest(self.registry) + generate_latest(scrape)


def key_of(event: Event) -> str:
    """The API key's name the event's run was submitted with ("" when it was not submitted through the API)."""
    return next((r.id.removeprefix(_KEY_TAG) for r in event.related if r.id.startswith(_KEY_TAG)), "")


class _Gauges(Collector):
    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from self.metrics


def gauge(name: str, help_text: str, label: str, samples: Mapping[str, float] | Sequence[tuple[str, float]]) -> Metric:
    """One gauge family with one label, from (label value, sample) pairs."""
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for value, sample in samples.items() if isinstance(samples, Mapping) else samples:
        family.add_metric([value], float(sample))
    return family


class ApiLatency:
    """ASGI middleware: every HTTP request's time into `comfybatch_api_request_seconds`, by its route template
    (`/api/batches/{batch_id}`), so label values stay few; the page's files count as `static`."""

    def __init__(self, app: ASGIApp, metrics: EventMetrics) -> None:
        self.app = app
        self.histogram = metrics.api_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None)
            template = "unmatched" if route is None else (path or "static")
            self.histogram.labels(method=scope["method"], route=template).observe(time.perf_counter() - began)
