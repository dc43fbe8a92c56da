"""`missing_reversal`: a network error whose attempt gets no reversal within the timeout.

Only a reversal of the attempt's `txn_ref` for the network error's card and in its currency
counts (docs/detectors.md, "Settlement"): one naming the reference for another card or currency
could be anybody's, so it is refused, counted and listed in the alert. Its amount is not
checked: the reversal of a timed-out authorisation cancels it, it gives no money back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from monitor.core.alerts import alert_id
from monitor.core.durations import Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes, money, short_card
from monitor.scoring.attempts import (
    Attempt,
    Attempts,
    IgnoreReason,
    Marks,
    ignored_details,
    refusal,
)
from monitor.scoring.detectors.base import (
    Deadline,
    DetectorSettings,
    Found,
    Hooks,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.state import Timers

NAME: Final = "missing_reversal"


class Settings(DetectorSettings):
    reversal_timeout: Seconds = 120.0

    def attempt_horizon(self) -> float:
        return self.reversal_timeout

    def build(self, shared: Shared, rank: int) -> MissingReversal:
        return MissingReversal(self, shared, rank)


@dataclass(slots=True, kw_only=True)
class UnreversedError(Incident):
    txn_ref: str
    amount_minor: int
    reversal_timeout_s: float
    ignored: list[tuple[Event, IgnoreReason]]

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "amount_minor": self.amount_minor,
            "currency": self.currency,
            "reversal_timeout_s": self.reversal_timeout_s,
            "settlements_ignored": ignored_details(self.ignored, self.max_evidence),
        }


class MissingReversal(Deadline[Attempt]):
    def __init__(self, settings: Settings, shared: Shared, rank: int) -> None:
        self.settings = settings
        self.timeout = us(settings.reversal_timeout)
        self.max_evidence = shared.max_evidence
        self._attempts: Attempts = shared.attempts
        self.timers: Timers[Attempt] = Timers(rank)
        self._decided: Marks[bool] = Marks(shared.attempts)

    def hooks(self) -> Hooks:
        return Hooks(on_attempt={"network_error": self.on_error})

    def on_error(self, ev: Event, attempt: Attempt) -> Found:
        """The attempt's first network error so far: decide at its time plus the timeout."""
        if attempt.first_error is ev:
            self.timers.schedule(ev.t + self.timeout, ev.txn_ref, attempt)
        return None

    def decide(self, payload: Attempt, deadline: int) -> UnreversedError | None:
        """Decided once per attempt, for its first network error (the earliest, however late
        an earlier one arrived)."""
        attempt = payload
        error = attempt.first_error
        if error is None or self._decided.get(attempt):
            return None
        self._decided.put(attempt, True)
        due = error.t + self.timeout
        cancelled, ignored = False, []
        for give_back in attempt.give_backs or ():
            if give_back.kind == "reversal" and give_back.t <= due:
                reason = refusal(give_back, error)
                if reason is None:
                    cancelled = True
                else:
                    ignored.append((give_back, reason))
                    self._attempts.refuse(give_back, reason)
        if cancelled:
            return None
        return UnreversedError(
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
            currency=error.currency,
            txn_ref=attempt.txn_ref,
            amount_minor=error.amount_minor,
            reversal_timeout_s=self.settings.reversal_timeout,
            ignored=ignored,
        )

    def sweep(self, watermark: int) -> None:
        self._decided.sweep()
