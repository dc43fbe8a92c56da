"""`failed_then_debited`: the ghost debit. The terminal said *failed*; the ledger debited anyway.

Each debit is decided once the watermark passes `debit time + reversal_grace`: it is matched to a
failed attempt (its own `txn_ref`, or for a manual debit with a fresh reference the latest
unmatched failure with the same card, terminal and amount shortly before), and fires unless a
reversal or refund came within the grace. Cases of one card at one terminal within
`group_window` grow one alert instead of paging again.

A reversal or refund that comes after the grace, up to `group_window` after the debit, still
gives the money back: the case is marked `given_back` (every case of that reference: a failed
attempt can be matched by its own debit and by a manual one), and once every case of the alert
is, the alert is re-emitted with `details.resolved = true` (the dispatcher resolves it on the
channels that support it). The horizon is on event time, so when a give-back is seen (before the
decision or after it, whatever the batch boundaries) never changes the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from monitor.core.alerts import Severity, alert_id
from monitor.core.durations import Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes, money, short_card
from monitor.scoring.attempts import FAILURES, Attempt, Attempts, Marks
from monitor.scoring.detectors.base import (
    Deadline,
    DetectorSettings,
    Found,
    Hooks,
    Shared,
)
from monitor.scoring.incident import Incident
from monitor.scoring.state import Expiring, Timers, Watermark

NAME: Final = "failed_then_debited"
_FAILURE_WORDS = {"network_error": "a network error", "auth_declined": "a decline"}


class Settings(DetectorSettings):
    severity: Severity = "critical"
    reversal_grace: Seconds = 900.0
    unlinked_window: Seconds = 1800.0
    group_window: Seconds = 86400.0

    def attempt_horizon(self) -> float:
        return self.reversal_grace + self.unlinked_window

    def build(self, shared: Shared, rank: int) -> FailedThenDebited:
        return FailedThenDebited(self, shared, rank)


@dataclass(slots=True)
class Case:
    """One failed attempt debited anyway (`linked`: by a debit of its own `txn_ref`)."""

    txn_ref: str
    debit_txn_ref: str
    failure: str
    response_code: str | None
    amount_minor: int
    linked: bool
    given_back: bool = False

    def as_dict(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "debit_txn_ref": self.debit_txn_ref,
            "failure": self.failure,
            "response_code": self.response_code,
            "amount_minor": self.amount_minor,
            "linked": self.linked,
            "given_back": self.given_back,
        }


@dataclass(slots=True, kw_only=True)
class GhostDebits(Incident):
    """The cases of one card at one terminal within `group_window` of the first case's debit."""

    txn_ref: str  # the first case's attempt
    first_debit_t: int
    reversal_grace_s: float
    cases: list[Case] = field(default_factory=list)

    @property
    def debited_minor(self) -> int:
        return sum(case.amount_minor for case in self.cases)

    @property
    def resolved(self) -> bool:
        """Every case was given back (after the grace)."""
        return all(case.given_back for case in self.cases)

    def details(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "currency": self.currency,
            "reversal_grace_s": self.reversal_grace_s,
            "cases": [case.as_dict() for case in self.cases],
            "debited_minor": self.debited_minor,
            "resolved": self.resolved,
        }

    def amount_at_risk(self) -> int:
        return self.debited_minor


@dataclass(slots=True, frozen=True)
class _OpenCase:
    """A case that fired and that a give-back up to `horizon` (event time) settles."""

    horizon: int
    incident: GhostDebits
    case: Case


class FailedThenDebited(Deadline[Event]):
    def __init__(self, settings: Settings, shared: Shared, rank: int) -> None:
        self.settings = settings
        self.grace = us(settings.reversal_grace)
        self.window = us(settings.unlinked_window)
        self.group_window = us(settings.group_window)
        self.max_evidence = shared.max_evidence
        self._attempts: Attempts = shared.attempts
        self._watermark: Watermark = shared.watermark
        self.timers: Timers[Event] = Timers(rank)
        # Failed attempts by card, terminal and amount: the candidates of a manual debit.
        self._failed: Expiring[list[Attempt]] = Expiring(shared.attempt_ttl_us, shared.cap)
        self._matched: Marks[bool] = Marks(shared.attempts)
        # (card, terminal) -> the alert its cases grow while within group_window
        self._groups: Expiring[GhostDebits] = Expiring(self.group_window, shared.cap)
        # txn_ref (the attempt's or the debit's) -> the open cases a late give-back would settle
        self._open_cases: Expiring[list[_OpenCase]] = Expiring(self.group_window, shared.cap)

    def hooks(self) -> Hooks:
        return Hooks(
            on_attempt={
                "auth_declined": self.on_failure,
                "network_error": self.on_failure,
                "debit_posted": self.on_debit,
                "reversal": self.on_give_back,
                "refund": self.on_give_back,
            }
        )

    def on_failure(self, ev: Event, attempt: Attempt) -> Found:
        """Index a failed outcome for manual debits with the same card, terminal and amount."""
        key = _failure_key(ev.card_id, ev.terminal_id, ev.amount_minor)
        candidates = self._failed.get_or_create(key, ev.t, list)
        if attempt not in candidates:
            candidates.append(attempt)
        return None

    def on_debit(self, ev: Event, attempt: Attempt) -> Found:
        """Decide the debit at its time plus the grace, unless it cannot be a ghost debit.

        The debit of an attempt whose first outcome is an approval that no on-time event can
        precede any more (it is behind the watermark) needs no decision: this spares the timer
        of nearly every debit in normal traffic.
        """
        first = attempt.first_outcome
        if first is None or first.kind != "auth_approved" or first.t >= self._watermark.value:
            self.timers.schedule(ev.t + self.grace, ev.event_id, ev)
        return None

    def decide(self, payload: Event, deadline: int) -> GhostDebits | None:
        """Take the decision for one debit (called in deadline order)."""
        debit = payload
        own = self._attempts.get(debit.txn_ref)
        if own is not None and own.failed:
            match: Attempt | None = own
        elif own is not None and own.approved:
            return None
        else:
            match = self._unlinked_match(debit)
        if match is None:
            return None
        self._matched.put(match, True)
        due = debit.t + self.grace
        if match.reversed_before(due) or (
            own is not None and own is not match and own.reversed_before(due)
        ):
            return None
        return self._record_case(match, debit, own)

    def _unlinked_match(self, debit: Event) -> Attempt | None:
        """The latest unmatched failed attempt whose failure lies in [debit - window, debit]."""
        candidates = self._failed.get(
            _failure_key(debit.card_id, debit.terminal_id, debit.amount_minor)
        )
        best: Attempt | None = None
        best_key: tuple[int, str] | None = None
        for attempt in candidates or ():
            first = attempt.first_outcome
            if self._matched.get(attempt) or first is None or first.kind not in FAILURES:
                continue
            if first.t <= debit.t <= first.t + self.window:
                key = (first.t, first.event_id)
                if best_key is None or key > best_key:
                    best, best_key = attempt, key
        return best

    def _record_case(self, attempt: Attempt, debit: Event, own: Attempt | None) -> GhostDebits:
        failure = attempt.first_outcome
        assert failure is not None  # a matched attempt is failed: it has a first outcome
        key = f"{attempt.card_id}\x1f{attempt.terminal_id}"
        incident = self._groups.get(key)
        if incident is None or debit.t - incident.first_debit_t > self.group_window:
            incident = GhostDebits(
                alert_id=alert_id(NAME, attempt.card_id, attempt.terminal_id, attempt.txn_ref),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=attempt.terminal_id,
                merchant_id=attempt.merchant_id,
                card_id=attempt.card_id,
                first_seen=failure.t,
                last_seen=debit.t,
                max_evidence=self.max_evidence,
                count=0,
                currency=debit.currency,
                txn_ref=attempt.txn_ref,
                first_debit_t=debit.t,
                reversal_grace_s=self.settings.reversal_grace,
            )
            self._groups.put(key, debit.t, incident)
        incident.count += 1
        incident.add_evidence(failure.t, failure.event_id)
        incident.add_evidence(debit.t, debit.event_id)
        case = Case(
            txn_ref=attempt.txn_ref,
            debit_txn_ref=debit.txn_ref,
            failure=failure.kind,
            response_code=failure.response_code,
            amount_minor=debit.amount_minor,
            linked=debit.txn_ref == attempt.txn_ref,
        )
        incident.cases.append(case)
        incident.summary = self._summary(incident, failure, debit.currency)
        # A give-back already known (it came after the grace, but before this decision).
        horizon = debit.t + self.group_window
        if _given_back(attempt, horizon) or (
            own is not None and own is not attempt and _given_back(own, horizon)
        ):
            case.given_back = True
        else:
            open_case = _OpenCase(horizon, incident, case)
            for ref in {attempt.txn_ref, debit.txn_ref}:
                self._open_cases.get_or_create(ref, debit.t, list).append(open_case)
        return incident

    def on_give_back(self, ev: Event, attempt: Attempt) -> Found:
        """A reversal or refund: the incidents whose fired cases it settles."""
        cases = self._open_cases.get(ev.txn_ref)
        if cases is None:
            return None
        settled = []
        for open_case in cases:
            if not open_case.case.given_back and ev.t <= open_case.horizon:
                open_case.case.given_back = True
                settled.append(open_case.incident)
        return settled or None

    def _summary(self, incident: GhostDebits, failure: Event, currency: str) -> str:
        amounts = [case.amount_minor for case in incident.cases]
        if len(set(amounts)) == 1:
            debited = f"{len(amounts)} x {money(amounts[0], currency)}"
        else:
            debited = f"{len(amounts)} times, {money(sum(amounts), currency)} in all,"
        assert incident.card_id is not None  # a ghost debit always names its card
        return (
            f"Card {short_card(incident.card_id)} debited {debited} at terminal"
            f" {incident.terminal_id} after {_FAILURE_WORDS.get(failure.kind, failure.kind)},"
            f" no reversal after {minutes(self.settings.reversal_grace)}"
        )

    def sweep(self, watermark: int) -> None:
        self._failed.expire(watermark)
        self._matched.sweep()
        self._groups.expire(watermark)
        self._open_cases.expire(watermark)


def _failure_key(card_id: str, terminal_id: str, amount_minor: int) -> str:
    return f"{card_id}\x1f{terminal_id}\x1f{amount_minor}"


def _given_back(attempt: Attempt, horizon: int) -> bool:
    """Has `attempt` a reversal or refund by `horizon`? At the decision, any it has came after
    the grace (one before would have cancelled the case)."""
    return attempt.reversed_before(horizon, inclusive=True) > 0
