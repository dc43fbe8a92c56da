"""`large_amount`: an attempt at or above the currency's threshold. Decided on arrival."""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, money, short_card
from monitor.config import LargeAmount as Settings
from monitor.events import Event
from monitor.state import Expiring

NAME: Final = "large_amount"


class LargeAmount:
    def __init__(self, settings: Settings, *, ttl_us: int, cap: int, max_evidence: int) -> None:
        self.settings = settings
        self.max_evidence = max_evidence
        # Retransmitted requests of one txn_ref grow one incident; evidence is kept in time order
        # so that the final alert does not depend on arrival order.
        self._open: Expiring[tuple[Incident, list[tuple[int, str]]]] = Expiring(ttl_us, cap)

    def on_request(self, ev: Event) -> Incident | None:
        threshold = self.settings.threshold(ev.currency)
        if ev.amount_minor < threshold:
            return None
        incident, evidence = self._open.get_or_create(
            ev.txn_ref, ev.t, lambda: self._open_incident(ev)
        )
        evidence.append((ev.t, ev.event_id))
        evidence.sort()
        incident.event_ids = [event_id for _, event_id in evidence][: self.max_evidence]
        incident.first_seen, incident.last_seen = evidence[0][0], evidence[-1][0]
        incident.count = len(evidence)
        incident.details.update(
            amount_minor=max(ev.amount_minor, _int(incident.details["amount_minor"]))
        )
        return incident

    def _open_incident(self, ev: Event) -> tuple[Incident, list[tuple[int, str]]]:
        threshold = self.settings.threshold(ev.currency)
        incident = Incident(
            alert_id=alert_id(NAME, ev.txn_ref),
            detector=NAME,
            severity=self.settings.severity,
            terminal_id=ev.terminal_id,
            merchant_id=ev.merchant_id,
            card_id=ev.card_id,
            first_seen=ev.t,
            last_seen=ev.t,
            max_evidence=self.max_evidence,
            summary=(
                f"Card {short_card(ev.card_id)} attempted {money(ev.amount_minor, ev.currency)}"
                f" at terminal {ev.terminal_id}, at or above the"
                f" {money(threshold, ev.currency)} large-amount threshold"
            ),
            details={
                "txn_ref": ev.txn_ref,
                "amount_minor": ev.amount_minor,
                "currency": ev.currency,
                "threshold_minor": threshold,
            },
        )
        return incident, []

    def expire(self, watermark: int) -> None:
        self._open.expire(watermark)


def _int(value: object) -> int:
    return value if isinstance(value, int) else 0
