"""`failed_then_debited`: the ghost debit. The terminal said *failed*; the ledger debited anyway.

Each debit is decided once the watermark passes `debit time + reversal_grace`: it is matched to a
failed attempt (its own `txn_ref`, or for a manual debit with a fresh reference the latest
unmatched failure with the same card, terminal and amount shortly before), and fires unless
reversals or refunds within the grace gave its whole amount back. Cases of one card at one
terminal within `group_window` grow one alert instead of paging again.

Only a give-back naming the attempt's or the debit's `txn_ref`, for the debit's card and in its
currency, gives anything back, and at most its own amount, shared among the cases naming it
(`Ledger`): anyone can write a reference into an event, so a reversal of one minor unit from
another card must not silence a critical alert. Those refused are counted and listed in the
alert (`details.settlements_ignored`). What the give-backs within the grace leave is the amount
at risk.

Give-backs after the grace, up to `group_window` after the debit, still give money back: once
they cover what was at risk the case is `given_back`, and once every case of the alert is, the
alert is re-emitted with `details.resolved = true` (the dispatcher resolves it on the channels
that support it). The horizon is on event time, so when a give-back is seen (before the
decision or after it, whatever the batch boundaries) never changes the outcome.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from monitor.core.alerts import Severity, alert_id
from monitor.core.durations import Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes, money, short_card
from monitor.scoring.attempts import (
    FAILURES,
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
class Offset:
    """The part of one reversal or refund that gives back a case's money."""

    event_id: str
    kind: str
    amount_minor: int
    in_grace: bool  # before the decision's deadline: it lowered the amount at risk

    def as_dict(self) -> dict[str, object]:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "amount_minor": self.amount_minor,
            "in_grace": self.in_grace,
        }


@dataclass(slots=True, kw_only=True)
class Case:
    """One failed attempt debited (`linked`: by a debit of its own `txn_ref`), and what of its
    money the give-backs that can settle it (same reference, card and currency) gave back."""

    txn_ref: str
    debit_txn_ref: str
    failure: str
    response_code: str | None
    debit: Event
    deadline: int  # the debit's time plus the grace
    horizon: int  # the latest give-back that still gives its money back
    offsets: list[Offset] = field(default_factory=list)
    offset_minor: int = 0  # given back within the grace
    given_back_minor: int = 0  # given back after it
    ignored: list[tuple[Event, IgnoreReason]] = field(default_factory=list)

    @property
    def amount_minor(self) -> int:
        return self.debit.amount_minor

    @property
    def at_risk_minor(self) -> int:
        """What the give-backs within the grace left of the debit: what the alert counts."""
        return self.amount_minor - self.offset_minor

    @property
    def settled(self) -> bool:
        """Given back in full within the grace: no alert."""
        return self.at_risk_minor <= 0 and any(o.in_grace for o in self.offsets)

    @property
    def given_back(self) -> bool:
        """What was at risk was given back after the grace."""
        return self.given_back_minor >= self.at_risk_minor and any(
            not o.in_grace for o in self.offsets
        )

    def takes(self, give_back: Event) -> bool:
        """Does `give_back` name this case and come by its horizon (of its card or not)?"""
        return give_back.t <= self.horizon and give_back.txn_ref in (
            self.txn_ref,
            self.debit_txn_ref,
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "txn_ref": self.txn_ref,
            "debit_txn_ref": self.debit_txn_ref,
            "failure": self.failure,
            "response_code": self.response_code,
            "amount_minor": self.amount_minor,
            "linked": self.txn_ref == self.debit_txn_ref,
            "offset_minor": self.offset_minor,
            "at_risk_minor": self.at_risk_minor,
            "given_back_minor": self.given_back_minor,
            "given_back": self.given_back,
            "offsets": [offset.as_dict() for offset in self.offsets],
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
            "settlements_ignored": ignored_details(
                (entry for case in self.cases for entry in case.ignored), self.max_evidence
            ),
        }

    def amount_at_risk(self) -> int:
        return sum(case.at_risk_minor for case in self.cases)


@dataclass(slots=True, eq=False)
class Ledger:
    """The decided cases that share a reference (a failed attempt matched by its own debit and
    by a manual one; a manual reference debited twice), with the give-backs naming any of
    those references: one give-back's amount is shared out among them, never counted twice.

    The sharing is recomputed from scratch whenever a case or a give-back joins (both are
    rare): give-backs in (time, event id) order, each offered to the cases in decision order.
    That makes it a function of what was seen, not of the order it arrived in, and the part
    of a case's money given back within its grace never changes once it is decided (any
    give-back arriving later is later than its deadline)."""

    refs: set[str] = field(default_factory=set)
    cases: list[Case] = field(default_factory=list)
    give_backs: dict[str, Event] = field(default_factory=dict)
    counted: set[str] = field(default_factory=set)  # event ids counted as ignored
    fired: list[tuple[Case, GhostDebits]] = field(default_factory=list)  # cases that alerted

    def settle(self) -> None:
        """Share the give-backs out again; note on each case those refused for it."""
        for case in self.cases:
            case.offsets, case.ignored = [], []
            case.offset_minor = case.given_back_minor = 0
        for give_back in sorted(self.give_backs.values(), key=_time_and_id):
            left = give_back.amount_minor
            for case in self.cases:
                if not case.takes(give_back):
                    continue
                reason = refusal(give_back, case.debit)
                if reason is not None:
                    case.ignored.append((give_back, reason))
                    continue
                need = case.amount_minor - case.offset_minor - case.given_back_minor
                take = min(left, need)
                if (need == 0 and case.offsets) or (take == 0 and need > 0):
                    continue  # already covered, or nothing left of this give-back
                in_grace = give_back.t < case.deadline
                case.offsets.append(
                    Offset(give_back.event_id, give_back.kind, take, in_grace=in_grace)
                )
                if in_grace:
                    case.offset_minor += take
                else:
                    case.given_back_minor += take
                left -= take


def _time_and_id(ev: Event) -> tuple[int, str]:
    return ev.t, ev.event_id


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
        # txn_ref (an attempt's or a debit's) -> the ledger of the decided cases naming it
        self._ledgers: Expiring[Ledger] = Expiring(self.group_window, shared.cap)

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
        failure = match.first_outcome
        assert failure is not None  # a matched attempt is failed: it has a first outcome
        case = Case(
            txn_ref=match.txn_ref,
            debit_txn_ref=debit.txn_ref,
            failure=failure.kind,
            response_code=failure.response_code,
            debit=debit,
            deadline=debit.t + self.grace,
            horizon=debit.t + self.group_window,
        )
        ledger = self._join(case)
        if case.settled:
            return None
        incident = self._record_case(failure, case)
        ledger.fired.append((case, incident))
        return incident

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

    def _join(self, case: Case) -> Ledger:
        """Put a decided case in the ledger of its references (merging ledgers it links), with
        every give-back of those references seen so far, and share the give-backs out."""
        refs = (case.txn_ref, case.debit_txn_ref)
        found: list[Ledger] = []
        for ref in refs:
            ledger = self._ledgers.get(ref)
            if ledger is not None and all(ledger is not f for f in found):
                found.append(ledger)
        ledger = max(found, key=lambda f: len(f.cases)) if found else Ledger()
        for other in found:
            if other is not ledger:
                ledger.refs |= other.refs
                ledger.cases.extend(other.cases)
                ledger.give_backs.update(other.give_backs)
                ledger.counted |= other.counted
                ledger.fired.extend(other.fired)
        ledger.refs.update(refs)
        ledger.cases.append(case)
        ledger.cases.sort(key=_decision_order)
        t = case.debit.t
        for ref in ledger.refs:
            if self._ledgers.touch(ref, t) is not ledger:
                self._ledgers.put(ref, t, ledger)
        for ref in refs:
            attempt = self._attempts.get(ref)
            for give_back in (attempt.give_backs or ()) if attempt is not None else ():
                self._add_give_back(ledger, give_back)
        self._settle(ledger)
        return ledger

    def _add_give_back(self, ledger: Ledger, give_back: Event) -> bool:
        """Hold `give_back` in `ledger` (False: already held, past every case's horizon, or the
        ledger is full: at most `max_evidence` give-backs are shared out, so a flood of them
        costs bounded work)."""
        if give_back.event_id in ledger.give_backs or not any(
            case.takes(give_back) for case in ledger.cases
        ):
            return False
        if len(ledger.give_backs) >= self.max_evidence:
            for case in ledger.cases:
                reason = refusal(give_back, case.debit) if case.takes(give_back) else None
                if reason is not None:
                    self._attempts.refuse(give_back, reason)  # still counted, not listed
                    break
            return False
        ledger.give_backs[give_back.event_id] = give_back
        return True

    def _settle(self, ledger: Ledger) -> None:
        ledger.settle()
        for case in ledger.cases:
            for give_back, reason in case.ignored:
                if give_back.event_id not in ledger.counted:
                    ledger.counted.add(give_back.event_id)
                    self._attempts.refuse(give_back, reason)

    def _record_case(self, failure: Event, case: Case) -> GhostDebits:
        """Add a case that fired to the alert of its card at its terminal. The alert names the
        failure's card, terminal and merchant: the attempt's own were taken from whichever of
        its events came first, which may be a give-back anyone could have sent."""
        debit = case.debit
        key = f"{failure.card_id}\x1f{failure.terminal_id}"
        incident = self._groups.get(key)
        if incident is None or debit.t - incident.first_debit_t > self.group_window:
            incident = GhostDebits(
                alert_id=alert_id(NAME, failure.card_id, failure.terminal_id, case.txn_ref),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=failure.terminal_id,
                merchant_id=failure.merchant_id,
                card_id=failure.card_id,
                first_seen=failure.t,
                last_seen=debit.t,
                max_evidence=self.max_evidence,
                count=0,
                currency=debit.currency,
                txn_ref=case.txn_ref,
                first_debit_t=debit.t,
                reversal_grace_s=self.settings.reversal_grace,
            )
            self._groups.put(key, debit.t, incident)
        incident.count += 1
        incident.add_evidence(failure.t, failure.event_id)
        incident.add_evidence(debit.t, debit.event_id)
        incident.cases.append(case)
        incident.summary = self._summary(incident, failure, debit.currency)
        return incident

    def on_give_back(self, ev: Event, attempt: Attempt) -> Found:
        """A reversal or refund naming a decided case: share the ledger's give-backs out again;
        the alerts whose cases it changed (given back, or a give-back refused) are emitted."""
        ledger = self._ledgers.get(ev.txn_ref)
        if ledger is None or not self._add_give_back(ledger, ev):
            return None
        before = [_shown(case) for case, _ in ledger.fired]
        self._settle(ledger)
        changed = {
            incident.alert_id: incident
            for (case, incident), shown in zip(ledger.fired, before, strict=True)
            if _shown(case) != shown
        }
        return list(changed.values()) or None

    def _summary(self, incident: GhostDebits, failure: Event, currency: str) -> str:
        amounts = [case.amount_minor for case in incident.cases]
        if len(set(amounts)) == 1:
            debited = f"{len(amounts)} x {money(amounts[0], currency)}"
        else:
            debited = f"{len(amounts)} times, {money(sum(amounts), currency)} in all,"
        assert incident.card_id is not None  # a ghost debit always names its card
        grace = minutes(self.settings.reversal_grace)
        at_risk = incident.amount_at_risk()
        given_back = (
            f" no reversal after {grace}"
            if at_risk == incident.debited_minor
            else f" {money(at_risk, currency)} not given back after {grace}"
        )
        return (
            f"Card {short_card(incident.card_id)} debited {debited} at terminal"
            f" {incident.terminal_id} after {_FAILURE_WORDS.get(failure.kind, failure.kind)},"
            + given_back
        )

    def sweep(self, watermark: int) -> None:
        self._failed.expire(watermark)
        self._matched.sweep()
        self._groups.expire(watermark)
        self._ledgers.expire(watermark)


def _failure_key(card_id: str, terminal_id: str, amount_minor: int) -> str:
    return f"{card_id}\x1f{terminal_id}\x1f{amount_minor}"


def _decision_order(case: Case) -> tuple[int, str]:
    """Cases are decided in (deadline, debit event id) order (docs/detectors.md, "Time")."""
    return case.deadline, case.debit.event_id


def _shown(case: Case) -> tuple[dict[str, object], int]:
    """What an alert shows of a case: a change of it is a new version of the alert."""
    return case.as_dict(), len(case.ignored)
