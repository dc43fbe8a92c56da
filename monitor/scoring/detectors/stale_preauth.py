"""`stale_preauth`: a pre-authorization hold neither completed nor released in time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from monitor.core.alerts import alert_id
from monitor.core.durations import Seconds, us
from monitor.core.events import Event
from monitor.core.text import money, short_card
from monitor.scoring.detectors.base import (
    Deadline,
    DetectorSettings,
    Found,
    Hooks,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.state import Expiring, Timers

NAME: Final = "stale_preauth"


class Settings(DetectorSettings):
    timeout: Seconds = 86400.0

    def build(self, shared: Shared, rank: int) -> StalePreauth:
        return StalePreauth(self, shared, rank)


@dataclass(slots=True, kw_only=True)
class StaleHold(Incident):
    txn_ref: str
    amount_minor: int
    timeout_s: float

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "timeout_s": self.timeout_s,
        }


class _Hold:
    __slots__ = ("closes", "decided", "hold")

    def __init__(self) -> None:
        self.hold: Event | None = None
        self.closes: list[int] = []
        self.decided = False


class StalePreauth(Deadline[str]):
    """Holds are kept apart from attempts: they live a day, attempts only hours."""

    def __init__(self, settings: Settings, shared: Shared, rank: int) -> None:
        self.settings = settings
        self.timeout = us(settings.timeout)
        self.max_evidence = shared.max_evidence
        self.timers: Timers[str] = Timers(rank)
        self._holds: Expiring[_Hold] = Expiring(self.timeout + 2 * shared.lateness_us, shared.cap)

    def __len__(self) -> int:
        return len(self._holds)

    def hooks(self) -> Hooks:
        return Hooks(
            on_event={
                "preauth_hold": self.on_hold,
                "preauth_release": self.on_close,
                "preauth_completion": self.on_close,
            }
        )

    def on_hold(self, ev: Event) -> Found:
        """Record a hold and decide it at `hold + timeout` (a repeated hold changes nothing)."""
        hold = self._holds.get_or_create(ev.txn_ref, ev.t, _Hold)
        if hold.hold is not None and (hold.hold.t, hold.hold.event_id) <= (ev.t, ev.event_id):
            return None
        hold.hold = ev
        self.timers.schedule(ev.t + self.timeout, ev.txn_ref, ev.txn_ref)
        return None

    def on_close(self, ev: Event) -> Found:
        self._holds.get_or_create(ev.txn_ref, ev.t, _Hold).closes.append(ev.t)
        return None

    def decide(self, payload: str, deadline: int) -> StaleHold | None:
        txn_ref = payload
        hold = self._holds.get(txn_ref)
        if hold is None or hold.hold is None or hold.decided:
            return None
        ev = hold.hold
        if ev.t + self.timeout != deadline:
            return None  # an earlier hold of this txn_ref arrived later; its own timer decides
        hold.decided = True
        if any(t <= deadline for t in hold.closes):
            return None
        return StaleHold(
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
            currency=ev.currency,
            txn_ref=txn_ref,
            amount_minor=ev.amount_minor,
            timeout_s=self.settings.timeout,
        )

    def sizes(self) -> dict[str, int]:
        return {"preauth_holds": len(self._holds)}

    def sweep(self, watermark: int) -> None:
        self._holds.expire(watermark)
