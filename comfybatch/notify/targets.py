"""Where a webhook may go: http(s) URLs whose host resolves to public addresses only, unless allowed (no SSRF)."""

import socket
from urllib.parse import urlsplit

from comfybatch.addresses import aresolve, internal
from comfybatch.errors import RequestProblem, WebhookRefused, WebhookUndelivered

MAX_URL_CHARS = 2048
ALLOW_PRIVATE_SETTING = "COMFYBATCH_WEBHOOK_ALLOW_PRIVATE"


def url_problem(url: str) -> str | None:
    """What is wrong with `url` as a webhook target, read from the text alone; None when nothing is."""
    if len(url) > MAX_URL_CHARS:
        return f"is longer than {MAX_URL_CHARS} characters"
    if any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in url):
        return "holds whitespace or control characters"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"is not a URL ({exc})"
    if parts.scheme not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "names no host"
    if port == 0:
        return "names port 0"
    return None


def shown(url: str) -> str:
    """The URL without path, query or credentials, for logs and events (webhook URLs often carry tokens)."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


async def resolve_target(url: str, *, allow_private: bool, field: str = "webhook") -> str:
    """The address to send to (the one checked here, so a second DNS answer cannot point inside).

    Raises:
        WebhookRefused: a malformed URL, or a loopback, private, link-local or other non-public address while
            `allow_private` is off. WebhookUndelivered (retryable): the host does not resolve now.
    """
    if (problem := url_problem(url)) is not None:
        raise _refused(f"{shown(url) if '://' in url else repr(url)} {problem}", field)
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        addresses = await aresolve(host, port)
    except (socket.gaierror, UnicodeError):
        raise WebhookUndelivered(f"{shown(url)}: the host {host!r} does not resolve") from None
    if (address := internal(addresses)) is not None and not allow_private:
        raise _refused(
            f"{shown(url)}: {host} is an internal address ({address}); webhooks go to public hosts only "
            f"({ALLOW_PRIVATE_SETTING}=true allows loopback, private and link-local ones)", field,
        )  # fmt: skip
    return str(addresses[0])


async def check_target(url: str, *, allow_private: bool, field: str = "webhook") -> None:
    """Refuse a target before a batch starts, an unresolvable host included.

    Raises:
        WebhookRefused naming `field`.
    """
    try:
        await resolve_target(url, allow_private=allow_private, field=field)
    except WebhookUndelivered as exc:
        raise _refused(str(exc), field) from None


def _refused(message: str, field: str) -> WebhookRefused:
    return WebhookRefused("this webhook is refused", problems=(RequestProblem(message, field=field),))
