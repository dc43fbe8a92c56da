"""`duplicate_debit`: one purchase attempt posted to the ledger twice, and not given back."""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, minutes, money, short_card
from monitor.attempts import Attempt
from monitor.config import DuplicateDebit as Settings
from monitor.config import us
from monitor.events import Event

NAME: Final = "duplicate_debit"


class DuplicateDebit:
    def __init__(self, settings: Settings, *, max_evidence: int) -> None:
        self.settings = settings
        self.grace = us(settings.reversal_grace)
        self.max_evidence = max_evidence

    def deadlines(self, debits: list[Event], new: Event) -> list[int]:
        """Checks to schedule after `new` joined the attempt's (sorted) debits."""
        if len(debits) < 2:
            return []
        checks = {debits[1].t + self.grace}
        if new is not debits[0]:
            checks.add(new.t + self.grace)
        return sorted(checks)

    def decide(self, attempt: Attempt, deadline: int) -> Incident | None:
        """Count debits and give-backs before `deadline`; fire when two or more debits remain."""
        debits = [d for d in attempt.debits or () if d.t < deadline]
        if len(debits) < 2 or deadline < debits[1].t + self.grace:
            return None
        given_back = attempt.reversed_before(deadline)
        if len(debits) - given_back < 2:
            return None
        incident = attempt.duplicate
        if incident is not None and incident.count >= len(debits):
            return None
        first = debits[0]
        if incident is None:
            incident = attempt.duplicate = Incident(
                alert_id=alert_id(NAME, attempt.txn_ref),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=first.terminal_id,
                merchant_id=first.merchant_id,
                card_id=first.card_id,
                first_seen=first.t,
                last_seen=first.t,
                max_evidence=self.max_evidence,
            )
        incident.count = len(debits)
        incident.event_ids = []
        for d in debits:
            incident.add_evidence(d.t, d.event_id)
        total = sum(d.amount_minor for d in debits)
        incident.details = {
            "txn_ref": attempt.txn_ref,
            "debits": len(debits),
            "reversals_and_refunds": given_back,
            "debited_minor": total,
            "currency": first.currency,
            "reversal_grace_s": self.settings.reversal_grace,
        }
        given = "none" if given_back == 0 else str(given_back)
        incident.summary = (
            f"Card {short_card(first.card_id)} debited {len(debits)} times"
            f" ({money(total, first.currency)} in all) for one purchase (ref {attempt.txn_ref})"
            f" at terminal {first.terminal_id}, {given} given back after"
            f" {minutes(self.settings.reversal_grace)}"
        )
        return incident
