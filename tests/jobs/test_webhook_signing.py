"""Standard Webhooks signatures: the published test vector, and what a receiver must refuse."""

from __future__ import annotations

import base64

import pytest

from jobs.webhooks.signing import SECRET_PREFIX, new_secret, secret_bytes, sign, webhook_headers
from vidq.client import WebhookVerificationError, verify_webhook

# The test vector of the Standard Webhooks specification (standard-webhooks/standard-webhooks, libraries' tests).
SPEC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SPEC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
SPEC_TIMESTAMP = 1614265330
SPEC_BODY = '{"test": 2432232314}'
SPEC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_signatures_match_the_standard_webhooks_test_vector() -> None:
    assert sign(SPEC_SECRET, SPEC_ID, SPEC_TIMESTAMP, SPEC_BODY) == SPEC_SIGNATURE
    headers = {"webhook-id": SPEC_ID, "webhook-timestamp": str(SPEC_TIMESTAMP), "webhook-signature": SPEC_SIGNATURE}
    assert verify_webhook(SPEC_SECRET, headers, SPEC_BODY.encode(), now=SPEC_TIMESTAMP + 10) == {"test": 2432232314}


def test_new_secrets_are_whsec_and_32_random_bytes() -> None:
    first, second = new_secret(), new_secret()
    assert first.startswith(SECRET_PREFIX) and first != second
    assert len(secret_bytes(first)) == 32 == len(base64.b64decode(first.removeprefix(SECRET_PREFIX)))


def test_a_receiver_refuses_tampered_bodies_wrong_secrets_and_old_messages() -> None:
    secret, body, now = new_secret(), b'{"type":"video.completed"}', 1_700_000_000
    headers = webhook_headers([secret], "msg_1", now, body)
    assert verify_webhook(secret, headers, body, now=now) == {"type": "video.completed"}
    upper = {k.upper(): v for k, v in headers.items()}
    assert verify_webhook(secret, upper, body, now=now)  # header names are case-insensitive

    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, headers, b'{"type":"video.failed"}', now=now)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(new_secret(), headers, body, now=now)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, {**headers, "webhook-id": "msg_2"}, body, now=now)
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify_webhook(secret, headers, body, now=now + 301)
    with pytest.raises(WebhookVerificationError):
        verify_webhook(secret, {k: v for k, v in headers.items() if k != "webhook-signature"}, body, now=now)


def test_during_a_rotation_both_secrets_verify_the_same_message() -> None:
    old, new, body, now = new_secret(), new_secret(), b"{}", 1_700_000_000
    headers = webhook_headers([new, old], "msg_1", now, body)
    signatures = headers["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert verify_webhook(old, headers, body, now=now) == {}
    assert verify_webhook(new, headers, body, now=now) == {}
