"""Prometheus Alertmanager: `POST {base}/api/v2/alerts` with a JSON list of alerts.

Alertmanager groups, silences, inhibits and routes on labels, so the labels carry only bounded,
routable values (detector, severity, merchant, terminal, the alert id): never the card token or a
PAN. The evidence goes in annotations.

Alertmanager treats an alert as a lease, not an event. A firing alert is posted without `endsAt`,
so Alertmanager resolves it by itself `resolve_timeout` (global setting, 5 min by default) after
the last post. The dispatcher must therefore re-post every open incident periodically, well inside
that timeout (Prometheus re-sends every minute; posmon should do the same: re-`send` the `trigger`
notification of each open incident every 60 s), and send a `resolve` (which sets `endsAt` = now)
when the incident closes. Re-posting is idempotent: Alertmanager merges alerts with equal labels.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx

from monitor.channels.base import format_link, post
from monitor.core.alerts import Alert
from monitor.paging.notification import Notification, Outcome


def _utc_now() -> datetime:
    return datetime.now(UTC)


class AlertmanagerChannel:
    """Posts notifications to Alertmanager's API v2 (one request per notification, all its
    alerts in one list). 200 is success; 400 (invalid alert) is permanent; 5xx retries.

    `generator_url` is an optional template formatted with the alert's fields (for example
    `https://grafana.example/d/posmon?var-alert_id={alert_id}`), shown as the alert's source link.
    `now` gives the `endsAt` of a resolve; it is injected so tests can fix it.
    """

    name = "alertmanager"
    supports_resolve = True
    # Alertmanager resolves a firing alert it has not heard of for `resolve_timeout` (5 min by
    # default): the dispatcher re-posts open incidents this often until they resolve.
    repost_every = 60.0

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client,
        generator_url: str | None = None,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.url = base_url.rstrip("/") + "/api/v2/alerts"
        self._client = client
        self._generator_url = generator_url
        self._now = now

    def __repr__(self) -> str:
        return f"AlertmanagerChannel({self.url!r})"

    def body(self, notification: Notification) -> list[dict[str, object]]:
        """The request body: the postable alerts of Alertmanager's OpenAPI spec."""
        ends_at = self._now().isoformat() if notification.kind == "resolve" else None
        return [self._postable(alert, ends_at) for alert in notification.alerts]

    def send(self, notification: Notification) -> Outcome:
        content = json.dumps(self.body(notification), separators=(",", ":")).encode()
        return post(self._client, self.url, content)

    def _postable(self, alert: Alert, ends_at: str | None) -> dict[str, object]:
        postable: dict[str, object] = {
            "labels": labels(alert),
            "annotations": {
                "summary": alert.summary,
                "description": json.dumps(
                    alert.details, separators=(",", ":"), sort_keys=True, default=str
                ),
                "count": str(alert.count),
            },
            "startsAt": alert.first_seen.isoformat(),
        }
        if ends_at is not None:
            postable["endsAt"] = ends_at
        if self._generator_url:
            postable["generatorURL"] = format_link(self._generator_url, alert)
        return postable


def labels(alert: Alert) -> dict[str, str]:
    """The labels Alertmanager routes and groups on (bounded values only; no card, no PAN)."""
    return {
        "alertname": f"posmon_{alert.detector}",
        "detector": alert.detector,
        "severity": alert.severity,
        "merchant_id": alert.merchant_id,
        "terminal_id": alert.terminal_id,
        "alert_id": alert.alert_id,
    }
