"""`missing_reversal`: a network error whose attempt gets no reversal within the timeout."""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, minutes, money, short_card
from monitor.attempts import Attempt
from monitor.config import MissingReversal as Settings
from monitor.config import us

NAME: Final = "missing_reversal"


class MissingReversal:
    def __init__(self, settings: Settings, *, max_evidence: int) -> None:
        self.settings = settings
        self.timeout = us(settings.reversal_timeout)
        self.max_evidence = max_evidence

    def deadline(self, attempt: Attempt) -> int:
        """When to decide: the attempt's first network error plus the reversal timeout."""
        assert attempt.first_error is not None
        return attempt.first_error.t + self.timeout

    def decide(self, attempt: Attempt) -> Incident | None:
        error = attempt.first_error
        if error is None or attempt.error_decided:
            return None
        attempt.error_decided = True
        deadline = error.t + self.timeout
        if attempt.reversed_before(deadline, refunds=False, inclusive=True):
            return None
        return Incident(
            alert_id=alert_id(NAME, attempt.txn_ref),
            detector=NAME,
            severity=self.settings.severity,
            terminal_id=error.terminal_id,
            merchant_id=error.merchant_id,
            card_id=error.card_id,
            first_seen=error.t,
            last_seen=error.t,
            max_evidence=self.max_evidence,
            event_ids=[error.event_id],
            summary=(
                f"Network error on {money(error.amount_minor, error.currency)} at terminal"
                f" {error.terminal_id} (card {short_card(error.card_id)}), no reversal within"
                f" {minutes(self.settings.reversal_timeout)}: the customer may hold a ghost debit"
            ),
            details={
                "txn_ref": attempt.txn_ref,
                "amount_minor": error.amount_minor,
                "currency": error.currency,
                "reversal_timeout_s": self.settings.reversal_timeout,
            },
        )
