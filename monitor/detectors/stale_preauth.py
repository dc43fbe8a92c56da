"""`stale_preauth`: a pre-authorization hold neither completed nor released in time."""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, money, short_card
from monitor.config import StalePreauth as Settings
from monitor.config import us
from monitor.events import Event
from monitor.state import Expiring

NAME: Final = "stale_preauth"


class _Hold:
    __slots__ = ("closes", "decided", "hold")

    def __init__(self) -> None:
        self.hold: Event | None = None
        self.closes: list[int] = []
        self.decided = False


class StalePreauth:
    """Holds are kept apart from attempts: they live a day, attempts only hours."""

    def __init__(
        self, settings: Settings, *, lateness_us: int, cap: int, max_evidence: int
    ) -> None:
        self.settings = settings
        self.timeout = us(settings.timeout)
        self.max_evidence = max_evidence
        self._holds: Expiring[_Hold] = Expiring(self.timeout + 2 * lateness_us, cap)

    def __len__(self) -> int:
        return len(self._holds)

    def on_hold(self, ev: Event) -> int | None:
        """Record a hold; returns the deadline to decide it at (None for a repeated hold)."""
        hold = self._holds.get_or_create(ev.txn_ref, ev.t, _Hold)
        if hold.hold is not None and (hold.hold.t, hold.hold.event_id) <= (ev.t, ev.event_id):
            return None
        hold.hold = ev
        return ev.t + self.timeout

    def on_close(self, ev: Event) -> None:
        self._holds.get_or_create(ev.txn_ref, ev.t, _Hold).closes.append(ev.t)

    def decide(self, txn_ref: str, deadline: int) -> Incident | None:
        hold = self._holds.get(txn_ref)
        if hold is None or hold.hold is None or hold.decided:
            return None
        ev = hold.hold
        if ev.t + self.timeout != deadline:
            return None  # an earlier hold of this txn_ref arrived later; its own timer decides
        hold.decided = True
        if any(t <= deadline for t in hold.closes):
            return None
        return Incident(
            alert_id=alert_id(NAME, txn_ref),
            detector=NAME,
            severity=self.settings.severity,
            terminal_id=ev.terminal_id,
            merchant_id=ev.merchant_id,
            card_id=ev.card_id,
            first_seen=ev.t,
            last_seen=ev.t,
            max_evidence=self.max_evidence,
            event_ids=[ev.event_id],
            summary=(
                f"Hold of {money(ev.amount_minor, ev.currency)} on card {short_card(ev.card_id)}"
                f" at terminal {ev.terminal_id} neither completed nor released after"
                f" {self.settings.timeout / 3600:g} h"
            ),
            details={
                "txn_ref": txn_ref,
                "amount_minor": ev.amount_minor,
                "currency": ev.currency,
                "timeout_s": self.settings.timeout,
            },
        )

    def expire(self, watermark: int) -> None:
        self._holds.expire(watermark)
