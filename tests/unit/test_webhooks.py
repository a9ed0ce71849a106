"""Webhook signing (Standard Webhooks' own test vector), secrets, targets refused for SSRF, and the request field."""

import pytest
from pydantic import ValidationError

from comfybatch.errors import WebhookRefused
from comfybatch.models import BatchSpec
from comfybatch.notify.signing import secret_bytes, sign
from comfybatch.notify.targets import resolve_target
from comfybatch.notify.webhooks import check_webhook, key_name_of, message_of, webhook_targets
from comfybatch.settings import Settings

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # standard-webhooks libraries/python/tests: test_sign_function


def test_sign_matches_the_standard_webhooks_vector() -> None:
    """The reference libraries' vector: same id, timestamp and body give the same `v1,` signature."""
    signature = sign(secret_bytes(SECRET), "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')

    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


@pytest.mark.parametrize(
    ("secret", "words"),
    [("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_"), ("whsec_c2hvcnQ=", "24 to 64"), ("whsec_$$$$", "base64")],
)
def test_secret_bytes_refuses_malformed_secrets(secret: str, words: str) -> None:
    """A secret without the prefix, too short or not base64 is refused, and the message never repeats it."""
    with pytest.raises(ValueError, match=words) as caught:
        secret_bytes(secret)

    assert secret.removeprefix("whsec_") not in str(caught.value)


def test_settings_refuse_a_malformed_secret_without_echoing_it() -> None:
    """COMFYBATCH_WEBHOOK_SECRET is checked where settings are built; the error names the format, not the value."""
    with pytest.raises(ValidationError) as caught:
        Settings(webhook_secret="not-a-standard-secret-value")

    assert "whsec_" in str(caught.value)
    assert "not-a-standard-secret-value" not in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "https://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://[::1]:9000/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://[fe80::1]/hook",
    ],
)
async def test_resolve_target_refuses_internal_addresses(url: str) -> None:
    """Loopback, link-local (cloud metadata), private and IPv4-mapped loopback targets are refused, naming the field."""
    with pytest.raises(WebhookRefused) as caught:
        await resolve_target(url, allow_private=False)

    assert caught.value.http_status == 422
    assert caught.value.problems[0].field == "webhook"
    assert "COMFYBATCH_WEBHOOK_ALLOW_PRIVATE" in str(caught.value)


@pytest.mark.anyio
async def test_resolve_target_allows_loopback_when_private_targets_are_allowed() -> None:
    """With COMFYBATCH_WEBHOOK_ALLOW_PRIVATE the loopback target resolves to the address that will be dialled."""
    assert await resolve_target("http://127.0.0.1:8080/hook", allow_private=True) == "127.0.0.1"


@pytest.mark.anyio
async def test_check_webhook_refuses_a_loopback_request_naming_the_field() -> None:
    """A batch request whose webhook is on loopback is refused before it starts (422, field `webhook`)."""
    spec = BatchSpec(name="a", workflow="txt2img-tiny", webhook="http://127.0.0.1:9/hook")

    with pytest.raises(WebhookRefused) as caught:
        await check_webhook(spec, Settings(webhook_secret=SECRET))

    assert caught.value.problems[0].field == "webhook"
    assert "internal address (127.0.0.1)" in str(caught.value)


@pytest.mark.anyio
async def test_check_webhook_needs_a_signing_secret() -> None:
    """Without COMFYBATCH_WEBHOOK_SECRET nothing could be signed: the webhook is refused, naming the setting."""
    spec = BatchSpec(name="a", workflow="txt2img-tiny", webhook="http://127.0.0.1:9/hook")

    with pytest.raises(WebhookRefused, match="COMFYBATCH_WEBHOOK_SECRET is not set"):
        await check_webhook(spec, Settings(webhook_allow_private=True, webhook_secret=None))


@pytest.mark.parametrize("url", ["ftp://example.com/hook", "https:///nohost", "https://exa mple.com/"])
def test_batch_spec_refuses_a_webhook_that_is_no_http_url(url: str) -> None:
    """The request model refuses a webhook that is not an http(s) URL with a host, naming `webhook`."""
    with pytest.raises(ValidationError) as caught:
        BatchSpec(name="a", workflow="txt2img-tiny", webhook=url)

    assert caught.value.errors()[0]["loc"] == ("webhook",)


def test_webhook_targets_add_the_api_keys_webhook() -> None:
    """A batch submitted with key `alice` (its run tag) also notifies alice's configured webhook."""
    settings = Settings(api_key_webhooks="alice:https://hooks.example/a?token=1,bob:https://hooks.example/b")
    spec = BatchSpec(name="a", workflow="txt2img-tiny", webhook="https://mine.example/h", webhook_items=True)

    targets = webhook_targets(spec, settings, key_name_of(["other", "submitted-by:alice"]))

    assert [(t.url, t.field, t.items) for t in targets] == [
        ("https://mine.example/h", "webhook", True),
        ("https://hooks.example/a?token=1", "COMFYBATCH_API_KEY_WEBHOOKS[alice]", True),
    ]


def test_message_of_keeps_one_id_per_run_and_event() -> None:
    """The same event of the same run gets the same webhook-id (receivers deduplicate), another event another."""
    finished = {"batch": "a", "done": 2, "failed": 0}
    first = message_of("comfybatch.batch.finished", finished, batch="a", run_id="run-1")
    again = message_of("comfybatch.batch.finished", finished, batch="a", run_id="run-1")
    started = message_of("comfybatch.batch.started", {"batch": "a"}, batch="a", run_id="run-1")

    assert first.webhook_id == again.webhook_id != started.webhook_id
    assert first.webhook_id.startswith("msg_")
    assert "." not in first.webhook_id  # the signed content is id.timestamp.body
    assert first.body.startswith(b'{"type":"batch.finished","timestamp":')
