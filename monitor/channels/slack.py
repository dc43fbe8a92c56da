"""Slack incoming webhook: a readable message, `{"text": ..., "blocks": [...]}`.

`text` is the notification line (`[critical] failed_then_debited — <summary>`); Slack shows it in
notifications and where blocks cannot be rendered. The blocks give one section per alert with its
place (merchant, terminal), its amounts in major units and a link built from `link_template`.
Every value from the data, in `text` as in the blocks, is `printable` (card numbers masked,
control characters escaped) and then escaped as Slack documents (`&`, `<`, `>`): Slack reads
`<!channel>` as a mention of everyone and `<https://...|label>` as a link that hides its target,
so an id or summary holding them must show them as written.

Slack answers 200 `ok`; 400 `invalid_payload`, 403 `invalid_token` / `action_prohibited`, 404
`no_service` / `channel_not_found` (permanent); 429 with `Retry-After`; 5xx (retry). An incoming
webhook cannot edit or close a message it posted, so the channel does not support resolves and
has no deduplication of its own: a redelivered notification posts a second message (the
dispatcher only re-sends what it has not seen accepted).

The webhook URL *is* the credential, hence a `SecretStr`, removed from every outcome reason.
httpx logs request URLs at INFO on the `httpx` logger: the entry layer must keep that logger at
WARNING or above.
"""

from __future__ import annotations

import json

import httpx
from pydantic import SecretStr

from monitor.channels.base import format_link, post
from monitor.core.alerts import Alert
from monitor.core.text import money, printable
from monitor.paging.notification import DELIVERED, Notification, Outcome

MAX_ALERT_BLOCKS = 20  # Slack allows 50 blocks per message; a storm is summarised, not listed
TEXT_CHARS = 3000  # Slack's limit on a section's text


class SlackChannel:
    """Posts a notification as one Slack message; resolves are answered `delivered` unsent."""

    name = "slack"
    supports_resolve = False

    def __init__(
        self, webhook_url: SecretStr, *, client: httpx.Client, link_template: str | None = None
    ) -> None:
        self._webhook_url = webhook_url
        self._client = client
        self._link_template = link_template

    def __repr__(self) -> str:
        return f"SlackChannel(webhook_url={self._webhook_url!r})"

    def send(self, notification: Notification) -> Outcome:
        if notification.kind == "resolve":
            return DELIVERED  # nothing to do: an incoming webhook cannot resolve a message
        content = json.dumps(self.message(notification), separators=(",", ":")).encode()
        url = self._webhook_url.get_secret_value()
        return post(self._client, url, content, secrets=[url])

    def message(self, notification: Notification) -> dict[str, object]:
        """The webhook body: fallback `text` and the blocks."""
        alerts = notification.alerts
        text = _escape(headline(notification))  # shown literally, here as in the blocks
        blocks = [_section(self._alert_text(alert)) for alert in alerts[:MAX_ALERT_BLOCKS]]
        if len(alerts) > 1 or notification.summary:
            blocks.insert(0, _section(text))  # a group gets its own headline on top
        if len(alerts) > MAX_ALERT_BLOCKS:
            more = len(alerts) - MAX_ALERT_BLOCKS
            blocks.append(
                {"type": "context", "elements": [{"type": "mrkdwn", "text": f"and {more} more"}]}
            )
        return {"text": text, "blocks": blocks}

    def _alert_text(self, alert: Alert) -> str:
        lines = [f"*[{alert.severity}] {alert.detector}* — {_escape(alert.summary)}"]
        facts = [f"merchant {alert.merchant_id}", f"terminal {alert.terminal_id}"]
        if alert.count > 1:
            facts.append(f"{alert.count} occurrences")
        facts += amounts(alert)
        lines.append(_escape(" · ".join(facts)))
        if self._link_template:
            lines.append(f"<{format_link(self._link_template, alert)}|alert {alert.alert_id}>")
        else:
            lines.append(f"alert `{alert.alert_id}`")
        return "\n".join(lines)[:TEXT_CHARS]


def headline(notification: Notification) -> str:
    """`[critical] failed_then_debited — <summary>`; a group is named by its worst severity and
    its size when the alerts differ."""
    alerts = notification.alerts
    severity = max((a.severity for a in alerts), key=_SEVERITY_RANK.__getitem__)
    detectors = sorted({a.detector for a in alerts})
    what = detectors[0] if len(detectors) == 1 else f"{len(alerts)} alerts"
    if len(alerts) > 1 and len(detectors) == 1:
        what = f"{len(alerts)} x {what}"
    return f"[{severity}] {what} — {notification.headline}"


_SEVERITY_RANK = {"info": 0, "warning": 1, "critical": 2}


def amounts(alert: Alert) -> list[str]:
    """The money the alert says is at risk, in major units (`35.00 EUR at risk`), from its
    `amount_at_risk_minor` and `currency`; nothing for a rule that puts no money at risk (its
    summary names the amounts)."""
    if alert.amount_at_risk_minor is None or alert.currency is None:
        return []
    return [f"{money(alert.amount_at_risk_minor, alert.currency)} at risk"]


def _section(text: str) -> dict[str, object]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text[:TEXT_CHARS]}}


def _escape(text: str) -> str:
    """Text from the data made `printable`, then Slack's three control characters escaped (the
    escaping Slack documents for message text, top-level `text` and mrkdwn blocks alike)."""
    return printable(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
