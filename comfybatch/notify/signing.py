"""Standard Webhooks signatures (standardwebhooks.com, symmetric `v1`): HMAC-SHA256 over `id.timestamp.body`."""

import base64
import binascii
import hashlib
import hmac

SECRET_PREFIX = "whsec_"
_MIN_SECRET_BYTES, _MAX_SECRET_BYTES = 24, 64  # the spec: at least 24 bytes (192 bits)


def secret_bytes(secret: str) -> bytes:
    """The key inside a `whsec_<base64>` secret.

    Raises:
        ValueError naming the expected format (never the secret).
    """
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("expected `whsec_` followed by base64 (Standard Webhooks secret format)")
    text = secret.removeprefix(SECRET_PREFIX).rstrip("=")
    try:
        # Padding restored: secrets are often shown unpadded (the reference libraries accept both).
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the part after `whsec_` is not base64") from None
    if not _MIN_SECRET_BYTES <= len(key) <= _MAX_SECRET_BYTES:
        raise ValueError(f"the secret must hold {_MIN_SECRET_BYTES} to {_MAX_SECRET_BYTES} random bytes")
    return key


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
