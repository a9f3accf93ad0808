"""Signing: the Standard Webhooks test vector, and interop with the `standardwebhooks` library."""

from __future__ import annotations

import time

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from sidecar.webhooks.signing import new_secret, sign, signature_headers

VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TS = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_published_test_vector() -> None:
    assert sign(VECTOR_SECRET, VECTOR_ID, VECTOR_TS, VECTOR_BODY) == VECTOR_SIGNATURE


def test_library_verifies_our_headers() -> None:
    secret = new_secret()
    body = b'{"type":"user.created","data":{"id":1}}'
    headers = signature_headers([secret], "msg_1", body)
    assert Webhook(secret).verify(body, headers) == {"type": "user.created", "data": {"id": 1}}


def test_rotation_signs_with_every_active_secret() -> None:
    old, new = new_secret(), new_secret()
    body = b"{}"
    headers = signature_headers([new, old], "msg_2", body)
    assert headers["webhook-signature"].count("v1,") == 2
    Webhook(old).verify(body, headers)
    Webhook(new).verify(body, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_tampered_body_fails() -> None:
    secret = new_secret()
    headers = signature_headers([secret], "msg_3", b'{"a":1}', int(time.time()))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"a":2}', headers)
