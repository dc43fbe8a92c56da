"""PagerDuty Events API v2: one event per alert, `dedup_key` = `alert_id`.

PagerDuty deduplicates on `dedup_key`: a second `trigger` with the key of an open incident is
added to that incident's log instead of paging again, and a `resolve` closes it. Because
`alert_id` is deterministic, at-least-once delivery (a retry, a redelivery after a restart) never
becomes a second page. Answers: 202 accepted; 400 invalid event (permanent); 429 throttled and
5xx (retry, honouring `Retry-After` when present).
"""

from __future__ import annotations

import json

import httpx
from pydantic import SecretStr

from monitor.channels.base import post, worst
from monitor.core.alerts import Alert
from monitor.core.text import money
from monitor.paging.notification import Notification, Outcome

EVENTS_URL = "https://events.pagerduty.com/v2/enqueue"
SUMMARY_CHARS = 1024  # PagerDuty's limit on payload.summary
MAX_EVENT_IDS = 50  # evidence ids in custom_details; the full list stays on the alerts topic

# posmon severity -> PagerDuty severity (PagerDuty also knows "error", which posmon does not use)
SEVERITY = {"critical": "critical", "warning": "warning", "info": "info"}


class PagerDutyChannel:
    """Sends each alert of a notification as its own Events v2 event.

    A grouped notification makes one request per alert, in order, and stops at the first
    `retry` outcome (the service is throttling or down: the rest would fail the same way). The
    result is the worst outcome (`base.worst`: retry > permanent > delivered). Retrying a
    partly delivered group re-sends the alerts that already went through; that is safe, since
    PagerDuty deduplicates them on `dedup_key`.
    """

    name = "pagerduty"
    supports_resolve = True

    def __init__(
        self, routing_key: SecretStr, *, client: httpx.Client, url: str = EVENTS_URL
    ) -> None:
        self._routing_key = routing_key
        self._client = client
        self.url = url

    def __repr__(self) -> str:
        return f"PagerDutyChannel(url={self.url!r}, routing_key={self._routing_key!r})"

    def send(self, notification: Notification) -> Outcome:
        outcomes: list[Outcome] = []
        for alert in notification.alerts:
            outcome = self._send_one(self.event(notification, alert))
            outcomes.append(outcome)
            if outcome.status == "retry":
                break
        return worst(outcomes)

    def event(self, notification: Notification, alert: Alert) -> dict[str, object]:
        """The Events v2 body for one alert (the routing key included, so never log it)."""
        body: dict[str, object] = {
            "routing_key": self._routing_key.get_secret_value(),
            "event_action": notification.kind,
            "dedup_key": alert.alert_id,
        }
        if notification.kind == "trigger":
            body["payload"] = payload(alert)
        return body

    def _send_one(self, body: dict[str, object]) -> Outcome:
        content = json.dumps(body, separators=(",", ":"), default=str).encode()
        return post(self._client, self.url, content, secrets=[self._routing_key.get_secret_value()])


def payload(alert: Alert) -> dict[str, object]:
    """The event's `payload`: summary, source, severity and the evidence in custom_details."""
    summary = alert.summary or f"posmon {alert.detector} at terminal {alert.terminal_id}"
    if len(summary) > SUMMARY_CHARS:
        summary = summary[: SUMMARY_CHARS - 1] + "…"
    details: dict[str, object] = dict(alert.details)
    details["count"] = alert.count
    details["alert_id"] = alert.alert_id
    if alert.amount_at_risk_minor is not None and alert.currency is not None:
        details["amount_at_risk"] = money(alert.amount_at_risk_minor, alert.currency)
    details["event_ids"] = alert.event_ids[:MAX_EVENT_IDS]
    if len(alert.event_ids) > MAX_EVENT_IDS:
        details["event_ids_omitted"] = len(alert.event_ids) - MAX_EVENT_IDS
    return {
        "summary": summary,
        "source": alert.terminal_id or alert.merchant_id,
        "severity": SEVERITY[alert.severity],
        "timestamp": alert.first_seen.isoformat(),
        "component": alert.detector,
        "group": alert.merchant_id,
        "class": alert.detector,
        "custom_details": details,
    }
