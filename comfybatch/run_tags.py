"""The tags a batch's flow run carries for what Prefect has no field for: who submitted it (the API key's name,
never the key) and which ended run it resumes. One home: the launcher writes them, the flow, webhooks, metrics
and the API read them."""

from collections.abc import Iterable

SUBMITTED_BY = "submitted-by:"
RESUMED_FROM = "resumed-from:"
# Prefect relates every event of a run to the run's tags as resources with this prefix.
EVENT_TAG_PREFIX = "prefect.tag."


def tag(prefix: str, value: object) -> str:
    return f"{prefix}{value}"


def tagged(tags: Iterable[str], prefix: str) -> str | None:
    """The value of the first tag with `prefix`, or None."""
    return next((found.removeprefix(prefix) for found in tags if found.startswith(prefix)), None)


def without(tags: Iterable[str], prefix: str) -> list[str]:
    return [kept for kept in tags if not kept.startswith(prefix)]


def resuming(tags: Iterable[str], run_id: object) -> list[str]:
    """The tags of a new run that resumes the ended run `run_id`: its own, with `resumed-from:` naming that run."""
    return [*without(tags, RESUMED_FROM), tag(RESUMED_FROM, run_id)]
