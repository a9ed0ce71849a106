"""Signed webhooks for one batch run: its `batch.*` (and, when asked, `item.done`/`item.failed`) events are POSTed to
the batch's and its API key's webhooks from background tasks, so a slow or dead receiver never slows the batch.

The events come from the engine's own (`tasks/events.py` listeners); each message is signed by the Standard
Webhooks scheme, retried with back-off and jitter for a bounded time under one `webhook-id`, and every attempt is
a Prefect event (`comfybatch.webhook.delivered|failed|refused`).
"""

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import httpx
import stamina
from prefect.events import emit_event
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from comfybatch.errors import RequestProblem, WebhookRefused, WebhookUndelivered, is_retryable
from comfybatch.models import BatchSpec
from comfybatch.notify.signing import secret_bytes, sign
from comfybatch.notify.targets import check_target, resolve_target, shown
from comfybatch.run_tags import SUBMITTED_BY, tagged
from comfybatch.settings import Settings
from comfybatch.tasks.events import add_listener, batch_resource

KEY_WEBHOOKS_SETTING = "COMFYBATCH_API_KEY_WEBHOOKS"
_BATCH_EVENTS = {"comfybatch.batch.started": "batch.started", "comfybatch.batch.finished": "batch.finished"}
_ITEM_EVENTS = {"comfybatch.item.done": "item.done", "comfybatch.item.failed": "item.failed"}
_QUEUE_MAX = 10_000  # messages waiting per target; beyond, item messages are dropped (a dead receiver, a huge batch)
_RETRY_AFTER_MAX_S = 60.0
_WAIT_INITIAL_S, _WAIT_MAX_S, _WAIT_JITTER_S = 1.0, 30.0, 1.0
_ID_NAMESPACE = uuid.UUID("5b0f9a52-77a4-4d3c-9a53-4f2e1c6b8d21")
_USER_AGENT = "comfybatch-webhooks/1"
_GONE = 410


@dataclass(frozen=True)
class WebhookTarget:
    """One receiver of a batch's messages, and the field or setting that named it (for refusals)."""

    url: str
    field: str
    items: bool


@dataclass(frozen=True)
class WebhookMessage:
    """One event as sent: the id every attempt repeats, its type, and the exact signed body."""

    webhook_id: str
    type: str
    body: bytes


def key_name_of(tags: Iterable[str]) -> str | None:
    """The API key's name a run was submitted with (its `submitted-by:<name>` tag), if any."""
    return tagged(tags, SUBMITTED_BY)


def webhook_targets(spec: BatchSpec, settings: Settings, key_name: str | None) -> list[WebhookTarget]:
    """The batch's own webhook and its API key's, each once."""
    targets = [WebhookTarget(spec.webhook, "webhook", spec.webhook_items)] if spec.webhook else []
    key_url = settings.api_key_webhooks.get(key_name) if key_name else None
    if key_url and key_url != spec.webhook:
        targets.append(WebhookTarget(key_url, f"{KEY_WEBHOOKS_SETTING}[{key_name}]", spec.webhook_items))
    return targets


async def check_webhook(spec: BatchSpec, settings: Settings) -> None:
    """Refuse the request's webhook before a batch starts: no signing secret, a malformed URL, a host that does
    not resolve, or an internal address (unless `COMFYBATCH_WEBHOOK_ALLOW_PRIVATE`).

    Raises:
        WebhookRefused (422) naming the field `webhook`.
    """
    if spec.webhook is None:
        return
    await check_target(spec.webhook, allow_private=settings.webhook_allow_private)
    if settings.webhook_secret is None:
        raise WebhookRefused("this webhook is refused", problems=(RequestProblem(
            "COMFYBATCH_WEBHOOK_SECRET is not set, so webhooks cannot be signed; ask the operator to set it",
            field="webhook"),))  # fmt: skip


def message_of(event: str, payload: dict[str, Any], *, batch: str, run_id: str) -> WebhookMessage:
    """The webhook for one engine event: Standard Webhooks' `{type, timestamp, data}`, minified.

    The id is derived from the run, the type and the item, so the same event written twice (the run's own ending
    and the runner's hook after a cancel) reaches receivers under one id, which they deduplicate on.
    """
    kind = _BATCH_EVENTS.get(event) or _ITEM_EVENTS[event]
    data = {key: value for key, value in payload.items() if key not in ("batch", "state")}
    data = {"batch": batch, "flow_run_id": run_id or None, **data}
    name = f"{run_id}/{kind}/{payload.get('job_key', '')}" if run_id else str(uuid.uuid4())
    body = {"type": kind, "timestamp": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "data": data}
    return WebhookMessage(webhook_id=f"msg_{uuid.uuid5(_ID_NAMESPACE, name).hex}", type=kind,
                          body=json.dumps(body, separators=(",", ":"), default=str).encode())  # fmt: skip


@dataclass
class _Lane:
    """One target's queue and sender task: messages to one receiver go in order, one at a time."""

    target: WebhookTarget
    queue: asyncio.Queue[WebhookMessage | None] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None
    dropped: int = 0
    delivered: int = 0
    gone: bool = False  # the receiver answered 410 Gone: it wants no more messages


class BatchWebhooks:
    """Sends one batch run's events to its webhooks while the run goes on; leaving waits at most `webhook_drain_s`.

    Example:
        async with BatchWebhooks.for_run(spec, settings, run_id=run_id, tags=tags, output=uri):
            ...  # emit_batch_event / emit_item_event as usual
    """

    def __init__(
        self, batch: str, targets: list[WebhookTarget], settings: Settings, *, run_id: str, output: str = "",
        strict: bool = True, transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:  # fmt: skip
        self.batch, self.targets, self.settings, self.run_id, self.output = batch, targets, settings, run_id, output
        self.strict = strict  # refuse a bad target with an error (a run's start) rather than leave it out (a hook)
        self._transport = transport
        self._lanes: list[_Lane] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._remove_listener: Callable[[], None] = _nothing
        self._key = b""

    @classmethod
    def for_run(cls, spec: BatchSpec, settings: Settings, *, run_id: str, tags: Iterable[str] = (), output: str = "",
                strict: bool = True) -> "BatchWebhooks":  # fmt: skip
        """The webhooks of `spec` run as `run_id`, its API key's (from the run's tags) included."""
        targets = webhook_targets(spec, settings, key_name_of(tags))
        return cls(spec.name, targets, settings, run_id=run_id, output=output, strict=strict)

    async def __aenter__(self) -> Self:
        """Check every target and start one sender per target.

        Raises:
            WebhookRefused naming the field or setting (only when `strict`; otherwise the target is left out).
        """
        if not self.targets:
            return self
        try:
            if self.settings.webhook_secret is None:
                raise WebhookRefused("webhooks cannot be signed", problems=(RequestProblem(
                    "COMFYBATCH_WEBHOOK_SECRET is not set", field=self.targets[0].field),))  # fmt: skip
            self._key = secret_bytes(self.settings.webhook_secret.get_secret_value())
            usable = await self._usable_targets()
        except WebhookRefused as exc:
            if self.strict:
                raise
            _logger().warning("%s: no webhooks sent: %s", self.batch, exc)
            return self
        self._loop = asyncio.get_running_loop()
        self._lanes = [_Lane(target) for target in usable]
        for lane in self._lanes:
            lane.task = asyncio.create_task(
                self._send_all(lane), name=f"webhooks {self.batch} {shown(lane.target.url)}"
            )
        self._remove_listener = add_listener(self._on_event)
        return self

    async def _usable_targets(self) -> list[WebhookTarget]:
        usable = []
        for target in self.targets:
            try:
                await check_target(target.url, allow_private=self.settings.webhook_allow_private, field=target.field)
            except WebhookRefused as exc:
                if self.strict:
                    raise
                _logger().warning("%s: webhook left out: %s", self.batch, exc)
                continue
            usable.append(target)
        return usable

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop listening, then wait at most `webhook_drain_s` for what is still queued; leave the rest."""
        self._remove_listener()
        tasks = [lane.task for lane in self._lanes if lane.task is not None]
        if not tasks:
            return
        assert self._loop is not None
        for lane in self._lanes:
            # The cue to stop once the queue is empty, scheduled like the events: after those still on their way.
            self._loop.call_soon_threadsafe(self._enqueue, lane, None)
        _, pending = await asyncio.wait(tasks, timeout=self.settings.webhook_drain_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for lane in self._lanes:
            left = lane.queue.qsize() + (1 if lane.task in pending else 0)
            if left or lane.dropped:
                _logger().warning(
                    "%s: %d webhook message(s) to %s not delivered by the batch's end (%d dropped: queue full or gone)",
                    self.batch, left + lane.dropped, shown(lane.target.url), lane.dropped,
                )  # fmt: skip

    def _on_event(self, event: str, payload: dict[str, Any]) -> None:
        """Listener (any thread): queue the event for each target that wants it; never blocks, never raises."""
        if event in _BATCH_EVENTS:
            if payload.get("batch") != self.batch:
                return
            payload = {**payload, "output": payload.get("output") or self.output or None}
        elif event in _ITEM_EVENTS:
            index = payload.get("index")
            if not isinstance(index, int) or payload.get("job_key") != f"{self.batch}-{index:05d}":
                return  # another batch's item, in this process
        else:
            return
        message = message_of(event, payload, batch=self.batch, run_id=self.run_id)
        for lane in self._lanes:
            if message.type in _BATCH_EVENTS.values() or lane.target.items:
                with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
                    assert self._loop is not None
                    self._loop.call_soon_threadsafe(self._enqueue, lane, message)

    @staticmethod
    def _enqueue(lane: _Lane, message: WebhookMessage | None) -> None:
        if message is not None and message.type in _ITEM_EVENTS.values() and lane.queue.qsize() >= _QUEUE_MAX:
            lane.dropped += 1  # item messages only: the batch's own are always kept
            return
        lane.queue.put_nowait(message)

    async def _send_all(self, lane: _Lane) -> None:
        async with httpx.AsyncClient(timeout=self.settings.webhook_timeout_s, follow_redirects=False,
                                     transport=self._transport) as http:  # fmt: skip
            while (message := await lane.queue.get()) is not None:
                if lane.gone:
                    lane.dropped += 1
                    continue
                try:
                    await self._deliver(http, lane.target, message)
                    lane.delivered += 1
                except (WebhookUndelivered, WebhookRefused) as exc:
                    # Standard Webhooks: 410 Gone means stop sending to this endpoint altogether.
                    lane.gone = isinstance(exc, WebhookUndelivered) and exc.status_code == _GONE
                    stop = "; no more messages go there" if lane.gone else ""
                    _logger().warning("%s: webhook %s (%s) not delivered: %s%s", self.batch, message.webhook_id,
                                      message.type, exc, stop)  # fmt: skip

    async def _deliver(self, http: httpx.AsyncClient, target: WebhookTarget, message: WebhookMessage) -> None:
        """Send until a 2xx, with back-off and jitter, for at most `webhook_attempts` / `webhook_retry_s`.

        Raises:
            WebhookUndelivered (the last attempt's), WebhookRefused (the target became an internal address).
        """
        attempts = stamina.retry_context(
            on=_backoff, attempts=self.settings.webhook_attempts, timeout=self.settings.webhook_retry_s,
            wait_initial=_WAIT_INITIAL_S, wait_max=_WAIT_MAX_S, wait_jitter=_WAIT_JITTER_S,
        )  # fmt: skip
        async for attempt in attempts:
            with attempt:
                await self._attempt(http, target, message, attempt.num)

    async def _attempt(self, http: httpx.AsyncClient, target: WebhookTarget, message: WebhookMessage, num: int) -> None:
        try:
            # Checked at every attempt (DNS answers change), then sent to the address checked: no rebinding.
            address = await resolve_target(target.url, allow_private=self.settings.webhook_allow_private,
                                           field=target.field)  # fmt: skip
        except (WebhookRefused, WebhookUndelivered) as exc:
            self._record(message, target, num, "refused" if isinstance(exc, WebhookRefused) else "failed", str(exc))
            raise
        timestamp = int(time.time())  # the attempt's time: each attempt is signed anew, under the same id
        url = httpx.URL(target.url)
        headers = {
            "content-type": "application/json", "user-agent": _USER_AGENT, "host": url.netloc.decode(),
            "webhook-id": message.webhook_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, message.webhook_id, timestamp, message.body),
        }  # fmt: skip
        try:
            response = await http.post(url.copy_with(host=address), content=message.body, headers=headers,
                                       extensions={"sni_hostname": url.host})  # fmt: skip
        except httpx.HTTPError as exc:
            self._record(message, target, num, "failed", f"{type(exc).__name__}")
            raise WebhookUndelivered(f"{shown(target.url)}: no answer ({type(exc).__name__})") from None
        if response.is_success:
            self._record(message, target, num, "delivered", status_code=response.status_code)
            return
        self._record(message, target, num, "failed", f"HTTP {response.status_code}", status_code=response.status_code)
        raise WebhookUndelivered(
            f"{shown(target.url)} answered HTTP {response.status_code}",
            retryable=response.status_code != _GONE,
            retry_after_s=_retry_after(response),
            status_code=response.status_code,
        )

    def _record(self, message: WebhookMessage, target: WebhookTarget, num: int, outcome: str, error: str = "", *,
                status_code: int | None = None) -> None:  # fmt: skip
        """One Prefect event per attempt (no URL path or query: they may hold the receiver's token)."""
        emit_event(
            event=f"comfybatch.webhook.{outcome}",
            resource={"prefect.resource.id": f"comfybatch.webhook.{message.webhook_id}",
                      "prefect.resource.name": message.type},
            related=[{**batch_resource(self.batch), "prefect.resource.role": "batch"}],
            payload={"webhook_id": message.webhook_id, "type": message.type, "attempt": num,
                     "target": shown(target.url), "status_code": status_code, "error": error or None},
        )  # fmt: skip


def _nothing() -> None:
    return None


def _backoff(exc: Exception) -> bool | float:
    """stamina's rule: retry what is retryable, after the receiver's Retry-After when it sent one."""
    if not is_retryable(exc):
        return False
    if isinstance(exc, WebhookUndelivered) and exc.retry_after_s is not None:
        return exc.retry_after_s
    return True


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), _RETRY_AFTER_MAX_S)
    except ValueError:
        return None


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run's logger (shown in the Prefect UI) inside a run, this module's outside one (the runner's hooks)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)
