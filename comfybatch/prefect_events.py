"""Following Prefect's live events for as long as this process runs."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

from prefect.events.clients import PrefectEventSubscriber
from prefect.events.filters import EventFilter
from prefect.events.schemas.events import Event

logger = logging.getLogger(__name__)

_RECONNECT_PAUSE_S = 1.0
_RECONNECT_MAX_PAUSE_S = 30.0


async def follow_events(
    event_filter: EventFilter,
    on_event: Callable[[Event], Awaitable[None]],
    *,
    api_url: str | None = None,
    on_subscribed: Callable[[], None] = lambda: None,
) -> None:
    """Hand each live event matching `event_filter` to `on_event`, until cancelled.

    Prefect's subscriber reconnects by itself a few times; past that (a Prefect server restarting for longer) this
    keeps trying, pausing 1 s, then twice as long each time up to 30 s. `on_subscribed` is called at each connection.
    """
    pause = _RECONNECT_PAUSE_S
    while True:
        try:
            async with PrefectEventSubscriber(
                api_url, filter=event_filter, reconnection_attempts=5, reconnect_on_clean_close=True
            ) as subscriber:
                on_subscribed()
                pause = _RECONNECT_PAUSE_S
                async for event in subscriber:
                    await on_event(event)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the Prefect server went away: keep trying
            logger.warning("Prefect event stream lost (%s: %s); reconnecting in %g s", type(exc).__name__, exc, pause)
        await asyncio.sleep(pause)
        pause = min(pause * 2, _RECONNECT_MAX_PAUSE_S)
