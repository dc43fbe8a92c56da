"""`duplicate_debit`: one purchase attempt posted to the ledger twice, and not given back.

The first debit of a `txn_ref` is the purchase; it fires when the debits counted, less what
the reversals and refunds within the grace gave back, are more than that first debit. Only a
give-back of the reference, for the first debit's card and in its currency, gives anything
back, and at most its own amount (docs/detectors.md, "Settlement"); one naming the reference
for another card or currency is refused, counted and listed in the alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from monitor.core.alerts import Severity, alert_id
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
    given_back: int  # the give-backs that gave something back
    offsets: list[tuple[str, str, int]]  # (event id, kind, amount given back)
    ignored: list[tuple[Event, IgnoreReason]]
    reversal_grace_s: float

    @property
    def offset_minor(self) -> int:
        return sum(amount for _, _, amount in self.offsets)

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "debits": self.count,
            "reversals_and_refunds": self.given_back,
            "debited_minor": self.debited_minor,
            "offset_minor": self.offset_minor,
            "offsets": [
                {"event_id": event_id, "kind": kind, "amount_minor": amount}
                for event_id, kind, amount in self.offsets
            ],
            "currency": self.currency,
            "reversal_grace_s": self.reversal_grace_s,
            "settlements_ignored": ignored_details(self.ignored, self.max_evidence),
        }

    def amount_at_risk(self) -> int:
        """Debited and not given back, the purchase itself included (as `debited_minor`)."""
        return self.debited_minor - self.offset_minor


class DuplicateDebit(Deadline[Attempt]):
    def __init__(self, settings: Settings, shared: Shared, rank: int) -> None:
        self.settings = settings
        self.grace = us(settings.reversal_grace)
        self.max_evidence = shared.max_evidence
        self._attempts: Attempts = shared.attempts
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
        """Count debits and give-backs before `deadline`; fire when more than the first debit
        (the purchase) remains debited."""
        attempt = payload
        debits = [d for d in attempt.debits or () if d.t < deadline]
        if len(debits) < 2 or deadline < debits[1].t + self.grace:
            return None
        first = debits[0]
        total = sum(d.amount_minor for d in debits)
        offsets, ignored = self._give_backs(attempt, first, deadline, total - first.amount_minor)
        offset = sum(amount for _, _, amount in offsets)
        if total - offset <= first.amount_minor:
            return None
        incident = self._fired.get(attempt)
        if incident is not None and incident.count >= len(debits):
            return None
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
                offsets=[],
                ignored=[],
                reversal_grace_s=self.settings.reversal_grace,
            )
            self._fired.put(attempt, incident)
        incident.count = len(debits)
        incident.event_ids = []
        for d in debits:
            incident.add_evidence(d.t, d.event_id)
        incident.debited_minor, incident.given_back = total, len(offsets)
        incident.offsets, incident.ignored = offsets, ignored
        incident.currency = first.currency
        given = "none" if not offsets else str(len(offsets))
        incident.summary = (
            f"Card {short_card(first.card_id)} debited {len(debits)} times"
            f" ({money(total, first.currency)} in all) for one purchase (ref {attempt.txn_ref})"
            f" at terminal {first.terminal_id}, {given} given back after"
            f" {minutes(self.settings.reversal_grace)}"
        )
        return incident

    def _give_backs(
        self, attempt: Attempt, first: Event, deadline: int, duplicated: int
    ) -> tuple[list[tuple[str, str, int]], list[tuple[Event, IgnoreReason]]]:
        """The give-backs of the reference before `deadline`, in (time, event id) order: what
        each of those for the first debit's card and currency gives back (at most its own
        amount, and no more than `duplicated` in all), and those refused (counted here)."""
        offsets: list[tuple[str, str, int]] = []
        ignored: list[tuple[Event, IgnoreReason]] = []
        left = duplicated
        for give_back in sorted(attempt.give_backs or (), key=_time_and_id):
            if give_back.t >= deadline:
                continue
            reason = refusal(give_back, first)
            if reason is not None:
                ignored.append((give_back, reason))
                self._attempts.refuse(give_back, reason)
            elif left > 0 and give_back.amount_minor > 0:
                take = min(give_back.amount_minor, left)
                offsets.append((give_back.event_id, give_back.kind, take))
                left -= take
        return offsets, ignored

    def sweep(self, watermark: int) -> None:
        self._fired.sweep()


def _time_and_id(ev: Event) -> tuple[int, str]:
    return ev.t, ev.event_id
