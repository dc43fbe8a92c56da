"""A generic signed JSON webhook, for in-house receivers (case management, chat bridges).

Body: `{"kind", "group_key", "summary", "alerts": [alert objects]}`, each alert as in
docs/contract.md, "Alert"; serialised once; the signature is computed over exactly the bytes
sent. Headers:

- `X-Posmon-Signature: sha256=<hex HMAC-SHA256 of the raw body, keyed with the shared secret>`;
- `X-Posmon-Timestamp: <epoch seconds>` when the attempt was made.

A receiver verifies with `hmac.compare_digest` over the raw body (`verify_signature` below is the
reference). The timestamp is informational: it is not covered by the signature, so a receiver that
needs replay protection should deduplicate on `alert_id` (which it should do anyway, delivery
being at-least-once).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable

import httpx
from pydantic import SecretStr

from monitor.channels.base import post
from monitor.paging.notification import Notification, Outcome

SIGNATURE_HEADER = "X-Posmon-Signature"
TIMESTAMP_HEADER = "X-Posmon-Timestamp"


class WebhookChannel:
    """POSTs the notification as signed JSON; 2xx delivered, 408/429/5xx retry, other permanent."""

    name = "webhook"
    supports_resolve = True

    def __init__(
        self,
        url: str,
        secret: SecretStr,
        *,
        client: httpx.Client,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self._secret = secret
        self._client = client
        self._clock = clock

    def __repr__(self) -> str:
        return f"WebhookChannel({self.url!r}, secret={self._secret!r})"

    def body(self, notification: Notification) -> bytes:
        """The raw body that is signed and sent."""
        document = {
            "kind": notification.kind,
            "group_key": notification.group_key,
            "summary": notification.headline,
            "alerts": [alert.model_dump(mode="json") for alert in notification.alerts],
        }
        return json.dumps(document, separators=(",", ":")).encode()

    def send(self, notification: Notification) -> Outcome:
        content = self.body(notification)
        secret = self._secret.get_secret_value()
        headers = {
            SIGNATURE_HEADER: sign(content, secret),
            TIMESTAMP_HEADER: str(int(self._clock())),
        }
        return post(self._client, self.url, content, headers, secrets=[secret])


def sign(body: bytes, secret: str) -> str:
    """`sha256=<hex HMAC-SHA256 of body>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, header: str, secret: str) -> bool:
    """What a receiver does: compare in constant time against the raw body it received."""
    return hmac.compare_digest(sign(body, secret), header)
