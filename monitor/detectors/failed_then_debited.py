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

from dataclasses import dataclass
from typing import Final

from monitor.alerts import Incident, alert_id, minutes, money, short_card
from monitor.attempts import Attempt, Attempts
from monitor.config import FailedThenDebited as Settings
from monitor.config import us
from monitor.events import Event
from monitor.state import Expiring

NAME: Final = "failed_then_debited"
_FAILURE_WORDS = {"network_error": "a network error", "auth_declined": "a decline"}


@dataclass(slots=True, frozen=True)
class _Case:
    """A case that fired and that a give-back up to `horizon` (event time) settles."""

    horizon: int
    incident: Incident
    case: dict[str, object]


@dataclass(slots=True)
class _Group:
    first_t: int
    incident: Incident
    amounts: list[int]


class FailedThenDebited:
    def __init__(self, settings: Settings, *, cap: int, max_evidence: int) -> None:
        self.settings = settings
        self.grace = us(settings.reversal_grace)
        self.window = us(settings.unlinked_window)
        self.group_window = us(settings.group_window)
        self.max_evidence = max_evidence
        self._groups: Expiring[_Group] = Expiring(self.group_window, cap)
        # txn_ref (the attempt's or the debit's) -> the open cases a late give-back would settle
        self._open_cases: Expiring[list[_Case]] = Expiring(self.group_window, cap)

    def deadline(self, debit: Event) -> int:
        return debit.t + self.grace

    def decide(self, debit: Event, attempts: Attempts) -> Incident | None:
        """Take the decision for one debit (called in deadline order)."""
        own = attempts.get(debit.txn_ref)
        if own is not None and own.failed:
            match: Attempt | None = own
        elif own is not None and own.approved:
            return None
        else:
            match = attempts.unlinked_match(debit, self.window)
        if match is None:
            return None
        match.matched = True
        deadline = debit.t + self.grace
        if match.reversed_before(deadline) or (
            own is not None and own is not match and own.reversed_before(deadline)
        ):
            return None
        return self._record_case(match, debit, attempts)

    def _record_case(self, attempt: Attempt, debit: Event, attempts: Attempts) -> Incident:
        failure = attempt.first_outcome
        assert failure is not None
        key = f"{attempt.card_id}\x1f{attempt.terminal_id}"
        group = self._groups.get(key)
        if group is None or debit.t - group.first_t > self.group_window:
            incident = Incident(
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
                details={
                    "txn_ref": attempt.txn_ref,
                    "currency": debit.currency,
                    "reversal_grace_s": self.settings.reversal_grace,
                    "cases": [],
                },
            )
            group = _Group(debit.t, incident, [])
            self._groups.put(key, debit.t, group)
        incident = group.incident
        incident.count += 1
        incident.add_evidence(failure.t, failure.event_id)
        incident.add_evidence(debit.t, debit.event_id)
        group.amounts.append(debit.amount_minor)
        cases = incident.details["cases"]
        assert isinstance(cases, list)
        case: dict[str, object] = {
            "txn_ref": attempt.txn_ref,
            "debit_txn_ref": debit.txn_ref,
            "failure": failure.kind,
            "response_code": failure.response_code,
            "amount_minor": debit.amount_minor,
            "linked": debit.txn_ref == attempt.txn_ref,
            "given_back": False,
        }
        cases.append(case)
        incident.details["debited_minor"] = sum(group.amounts)
        incident.details["resolved"] = False
        incident.summary = self._summary(incident, group, failure, debit.currency)
        own = attempts.get(debit.txn_ref)
        # A give-back already known (it came after the grace, but before this decision).
        horizon = debit.t + self.group_window
        if _given_back(attempt, horizon) or (
            own is not None and own is not attempt and _given_back(own, horizon)
        ):
            self._settle(incident, case)
        else:
            open_case = _Case(horizon, incident, case)
            for ref in {attempt.txn_ref, debit.txn_ref}:
                self._open_cases.get_or_create(ref, debit.t, list).append(open_case)
        return incident

    def on_give_back(self, ev: Event) -> list[Incident]:
        """A reversal or refund: the incidents whose fired cases it settles."""
        cases = self._open_cases.get(ev.txn_ref)
        if cases is None:
            return []
        settled = []
        for open_case in cases:
            if not open_case.case["given_back"] and ev.t <= open_case.horizon:
                self._settle(open_case.incident, open_case.case)
                settled.append(open_case.incident)
        return settled

    def _settle(self, incident: Incident, case: dict[str, object]) -> None:
        case["given_back"] = True
        cases = incident.details["cases"]
        assert isinstance(cases, list)
        if all(c["given_back"] for c in cases):
            incident.details["resolved"] = True

    def _summary(self, incident: Incident, group: _Group, failure: Event, currency: str) -> str:
        amounts = group.amounts
        if len(set(amounts)) == 1:
            debited = f"{len(amounts)} x {money(amounts[0], currency)}"
        else:
            debited = f"{len(amounts)} times, {money(sum(amounts), currency)} in all,"
        assert incident.card_id is not None
        return (
            f"Card {short_card(incident.card_id)} debited {debited} at terminal"
            f" {incident.terminal_id} after {_FAILURE_WORDS.get(failure.kind, failure.kind)},"
            f" no reversal after {minutes(self.settings.reversal_grace)}"
        )

    def expire(self, watermark: int) -> None:
        self._groups.expire(watermark)
        self._open_cases.expire(watermark)


def _given_back(attempt: Attempt, horizon: int) -> bool:
    """Has `attempt` a reversal or refund by `horizon`? At the decision, any it has came after
    the grace (one before would have cancelled the case)."""
    return attempt.reversed_before(horizon, inclusive=True) > 0
