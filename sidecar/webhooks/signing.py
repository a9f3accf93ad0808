"""Standard Webhooks signing: `webhook-id`, `webhook-timestamp`, `webhook-signature`.

The signature is `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` keyed by the base64-decoded
part of a `whsec_...` secret; during a rotation one `v1,` entry is sent per active secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"


def new_secret() -> str:
    """A fresh `whsec_<base64 of 32 random bytes>` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_...` secret (its base64-decoded part)."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX) + "==")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature of exactly these bytes."""
    content = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_headers(
    secrets_: Sequence[str], message_id: str, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for one attempt, signed by every active secret."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(sign(s, message_id, ts, body) for s in secrets_),
    }
