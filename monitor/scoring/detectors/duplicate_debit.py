"""`duplicate_debit`: one purchase attempt posted to the ledger twice, and not given back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from monitor.core.alerts import Severity, alert_id
from monitor.core.durations import Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes, money, short_card
from monitor.scoring.attempts import Attempt, Marks
from monitor.scoring.detectors.base import (
    Deadline,
    DetectorSettings,
    Found,
    Hooks,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.state import Timers

NAME: Final = "duplicate_debit"


class Settings(DetectorSettings):
    severity: Severity = "critical"
    reversal_grace: Seconds = 900.0

    def attempt_horizon(self) -> float:
        return self.reversal_grace

    def build(self, shared: Shared, rank: int) -> DuplicateDebit:
        return DuplicateDebit(self, shared, rank)


@dataclass(slots=True, kw_only=True)
class DuplicateDebits(Incident):
    """The debits of one `txn_ref` counted before the latest decision's deadline."""

    txn_ref: str
    debited_minor: int
    given_back: int
    reversal_grace_s: float

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "debits": self.count,
            "reversals_and_refunds": self.given_back,
            "debited_minor": self.debited_minor,
            "currency": self.currency,
            "reversal_grace_s": self.reversal_grace_s,
        }

    def amount_at_risk(self) -> int:
        return self.debited_minor


class DuplicateDebit(Deadline[Attempt]):
    def __init__(self, settings: Settings, shared: Shared, rank: int) -> None:
        self.settings = settings
        self.grace = us(settings.reversal_grace)
        self.max_evidence = shared.max_evidence
        self.timers: Timers[Attempt] = Timers(rank)
        self._fired: Marks[DuplicateDebits] = Marks(shared.attempts)  # one alert per attempt

    def hooks(self) -> Hooks:
        return Hooks(on_attempt={"debit_posted": self.on_debit})

    def on_debit(self, ev: Event, attempt: Attempt) -> Found:
        """A second or later debit: check at the second debit's deadline and at this one's."""
        debits = attempt.debits
        if debits is None or len(debits) < 2:
            return None
        checks = {debits[1].t + self.grace}
        if ev is not debits[0]:
            checks.add(ev.t + self.grace)
        for deadline in sorted(checks):
            self.timers.schedule(deadline, ev.txn_ref, attempt)
        return None

    def decide(self, payload: Attempt, deadline: int) -> DuplicateDebits | None:
        """Count debits and give-backs before `deadline`; fire when two or more debits remain."""
        attempt = payload
        debits = [d for d in attempt.debits or () if d.t < deadline]
        if len(debits) < 2 or deadline < debits[1].t + self.grace:
            return None
        given_back = attempt.reversed_before(deadline)
        if len(debits) - given_back < 2:
            return None
        incident = self._fired.get(attempt)
        if incident is not None and incident.count >= len(debits):
            return None
        first = debits[0]
        if incident is None:
            incident = DuplicateDebits(
                alert_id=alert_id(NAME, attempt.txn_ref),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=first.terminal_id,
                merchant_id=first.merchant_id,
                card_id=first.card_id,
                first_seen=first.t,
                last_seen=first.t,
                max_evidence=self.max_evidence,
                txn_ref=attempt.txn_ref,
                debited_minor=0,
                given_back=0,
                reversal_grace_s=self.settings.reversal_grace,
            )
            self._fired.put(attempt, incident)
        incident.count = len(debits)
        incident.event_ids = []
        for d in debits:
            incident.add_evidence(d.t, d.event_id)
        total = sum(d.amount_minor for d in debits)
        incident.debited_minor, incident.given_back = total, given_back
        incident.currency = first.currency
        given = "none" if given_back == 0 else str(given_back)
        incident.summary = (
            f"Card {short_card(first.card_id)} debited {len(debits)} times"
            f" ({money(total, first.currency)} in all) for one purchase (ref {attempt.txn_ref})"
            f" at terminal {first.terminal_id}, {given} given back after"
            f" {minutes(self.settings.reversal_grace)}"
        )
        return incident

    def sweep(self, watermark: int) -> None:
        self._fired.sweep()
