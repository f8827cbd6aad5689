"""Standard Webhooks signatures (https://www.standardwebhooks.com), as OpenAI and Replicate send them.

The signed content is ``f"{webhook_id}.{webhook_timestamp}.{body}"``; the signature is the base64 of
its HMAC-SHA256 under the secret's bytes (the base64 after the ``whsec_`` prefix), sent as
``webhook-signature: v1,<signature>``. Several space-separated signatures may be sent (one per
active secret while a secret rotates); a receiver accepts the message if any one matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32  # Standard Webhooks asks for 24 to 64 random bytes


class InvalidSecret(ValueError):
    pass


def new_secret() -> str:
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of a ``whsec_...`` secret (a secret without the prefix is taken as bare base64)."""
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise InvalidSecret("a webhook secret is 'whsec_' followed by base64") from None


def sign(secret: str, msg_id: str, timestamp: int, body: bytes | str) -> str:
    """One ``v1,<base64>`` signature of ``body`` as sent with ``msg_id`` at ``timestamp`` (Unix seconds)."""
    payload = body.encode() if isinstance(body, str) else body
    content = f"{msg_id}.{timestamp}.".encode() + payload
    digest = hmac.new(secret_bytes(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signature_header(signing_secrets: list[str], msg_id: str, timestamp: int, body: bytes | str) -> str:
    """The ``webhook-signature`` value: one signature per secret, space-separated."""
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in signing_secrets)


def webhook_headers(signing_secrets: list[str], msg_id: str, timestamp: int, body: bytes | str) -> dict[str, str]:
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_header(signing_secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }


def signature_matches(secret: str, msg_id: str, timestamp: int, body: bytes | str, header: str) -> bool:
    """True if any ``v1`` signature in ``header`` is ``body``'s, compared in constant time."""
    expected = sign(secret, msg_id, timestamp, body).encode()
    found = False
    for candidate in header.split():
        if candidate.startswith("v1,"):
            # compare_digest's time does not depend on where the strings differ; keep looping so the
            # position of a match is not observable either.
            found |= hmac.compare_digest(candidate.encode(), expected)
    return found
