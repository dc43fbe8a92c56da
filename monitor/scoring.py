"""The scorer: accepted events in, incidents out, on event time.

For each event, in this order: drop a redelivered `event_id`, move the watermark (counting a
late event), update the attempt it belongs to, and hand it to the detectors of its kind. After a
batch, `advance` releases the held-back events the watermark has passed to the ordered
detectors, takes every decision whose deadline it has passed, and sweeps expired state. Nothing
here reads the clock; `close` ends the input (CONTRACT section 1).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from typing import Final

from monitor.alerts import Alert, Incident
from monitor.attempts import FAILURES, Attempt, Attempts
from monitor.config import Policy, us
from monitor.detectors.duplicate_debit import DuplicateDebit
from monitor.detectors.failed_then_debited import FailedThenDebited
from monitor.detectors.large_amount import LargeAmount
from monitor.detectors.missing_reversal import MissingReversal
from monitor.detectors.small_amount_burst import SmallAmountBurst
from monitor.detectors.stale_preauth import StalePreauth
from monitor.detectors.terminal_failure_spike import TerminalFailureSpike
from monitor.events import KINDS, Event
from monitor.state import NEVER, SeenIds, Timers, Watermark

# Timer ranks: ties on one deadline are taken in this order, then by incident key.
_FTD, _DUP, _MISSING, _STALE = 0, 1, 2, 3
# Expiry sweeps walk quiet keys; every five minutes of event time keeps that off the per-event
# cost, and holds at most five minutes' worth of expired entries longer.
_SWEEP_EVERY_US: Final = 300_000_000


class Scorer:
    """Owns the event-time state of one stream (one partition group) and its detectors."""

    def __init__(self, policy: Policy) -> None:
        limits, d = policy.state, policy.detectors
        self.lateness = us(policy.allowed_lateness)
        self.watermark = Watermark(self.lateness)
        self.seen = SeenIds(us(limits.dedup_horizon), limits.max_dedup_ids)
        self.attempts = Attempts(us(limits.attempt_ttl), limits.max_attempts)
        self.timers: Timers[object] = Timers()
        evidence, cap = limits.max_evidence, limits.max_keys

        self.ftd = (
            FailedThenDebited(d.failed_then_debited, cap=cap, max_evidence=evidence)
            if d.failed_then_debited.enabled
            else None
        )
        self.dup = (
            DuplicateDebit(d.duplicate_debit, max_evidence=evidence)
            if d.duplicate_debit.enabled
            else None
        )
        self.missing = (
            MissingReversal(d.missing_reversal, max_evidence=evidence)
            if d.missing_reversal.enabled
            else None
        )
        self.burst = (
            SmallAmountBurst(
                d.small_amount_burst, lateness_us=self.lateness, cap=cap, max_evidence=evidence
            )
            if d.small_amount_burst.enabled
            else None
        )
        self.spike = (
            TerminalFailureSpike(
                d.terminal_failure_spike, lateness_us=self.lateness, cap=cap, max_evidence=evidence
            )
            if d.terminal_failure_spike.enabled
            else None
        )
        self.large = (
            LargeAmount(
                d.large_amount, ttl_us=us(limits.attempt_ttl), cap=cap, max_evidence=evidence
            )
            if d.large_amount.enabled
            else None
        )
        self.stale = (
            StalePreauth(d.stale_preauth, lateness_us=self.lateness, cap=cap, max_evidence=evidence)
            if d.stale_preauth.enabled
            else None
        )
        # Cheap pre-checks on the per-request path; the detectors make the real decision.
        self._large_from = min(
            [d.large_amount.large_amount_minor, *d.large_amount.per_currency.values()]
        )
        self._small_up_to = d.small_amount_burst.max_amount_minor
        # A plain dict with every kind: a Counter's subscripts take the slower generic path.
        self.consumed: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._partition = 0
        self._partition_max = NEVER
        self._solo = True
        self.duplicates = 0
        self.late = 0
        self.small_attempts = 0
        self._changed: dict[str, Incident] = {}
        self._last_sweep = NEVER

    # -- per event -------------------------------------------------------------------------

    def use_partition(self, partition: int, active: Collection[int] | None = None) -> None:
        """The events that follow come from `partition`, in a batch whose source reports
        `active` partitions (None: every partition seen; a replay has only partition 0)."""
        maxima = self.watermark.maxima
        if self._partition_max != NEVER:
            maxima[self._partition] = self._partition_max
        self._partition = partition
        self._partition_max = maxima.get(partition, NEVER)
        # Alone, the partition's newest event is the watermark's only input: it can follow
        # every event, exactly as CONTRACT section 1 reads for a replay.
        self._solo = all(p == partition for p in (maxima if active is None else {*maxima, *active}))

    def process(self, ev: Event) -> None:
        """Apply one accepted event. A redelivered `event_id` is counted and ignored."""
        self.process_many((ev,))

    def process_many(self, events: Iterable[Event]) -> None:
        """Apply accepted events in order (the hot loop: one call per chunk, not per event)."""
        seen_add, consumed, mark = self.seen.add, self.consumed, self.watermark
        lateness, solo, partition_max = self.lateness, self._solo, self._partition_max
        handlers = _HANDLERS
        for ev in events:
            watermark = mark.value
            if not seen_add(ev.event_id, watermark):
                self.duplicates += 1
                continue
            kind = ev.kind
            consumed[kind] += 1
            t = ev.t
            if t < watermark:
                self.late += 1
            if t > partition_max:
                partition_max = t
                if solo and t - lateness > watermark:
                    # One partition (a replay): the watermark follows every event.
                    mark.value = t - lateness
            handlers[kind](self, ev)
        self._partition_max = partition_max

    def _on_request(self, ev: Event) -> None:
        amount = ev.amount_minor
        if amount >= self._large_from and self.large is not None:
            self._grew(self.large.on_request(ev))
        if amount <= self._small_up_to:
            self.small_attempts += 1
            if self.burst is not None:
                self.burst.record(ev)

    def _on_outcome(self, ev: Event) -> None:
        attempt = self.attempts.touch(ev)
        attempt.on_outcome(ev)
        if ev.kind in FAILURES:
            self.attempts.index_failure(attempt, ev)
        if self.spike is not None:
            self.spike.record(ev)
        if self.missing is not None and attempt.first_error is ev:
            self.timers.schedule(self.missing.deadline(attempt), _MISSING, ev.txn_ref, attempt)

    def _on_reversal(self, ev: Event) -> None:
        self.attempts.touch(ev).add_reversal(ev.t)
        if self.ftd is not None:
            for incident in self.ftd.on_give_back(ev):
                self._grew(incident)

    def _on_refund(self, ev: Event) -> None:
        self.attempts.touch(ev).add_refund(ev.t)
        if self.ftd is not None:
            for incident in self.ftd.on_give_back(ev):
                self._grew(incident)

    def _on_debit(self, ev: Event) -> None:
        attempt = self.attempts.touch(ev)
        debits = attempt.add_debit(ev)
        if self.ftd is not None and not self._settled_approved(attempt):
            self.timers.schedule(self.ftd.deadline(ev), _FTD, ev.event_id, ev)
        if len(debits) > 1 and self.dup is not None:
            for deadline in self.dup.deadlines(debits, ev):
                self.timers.schedule(deadline, _DUP, ev.txn_ref, attempt)

    def _settled_approved(self, attempt: Attempt) -> bool:
        """True when the attempt's first outcome is an approval no on-time event can precede.

        The debit of such an attempt can never be a ghost debit, so it needs no decision: this
        spares the timer of nearly every debit in normal traffic.
        """
        first = attempt.first_outcome
        return (
            first is not None and first.kind == "auth_approved" and first.t < self.watermark.value
        )

    def _on_hold(self, ev: Event) -> None:
        if self.stale is not None:
            deadline = self.stale.on_hold(ev)
            if deadline is not None:
                self.timers.schedule(deadline, _STALE, ev.txn_ref, ev.txn_ref)

    def _on_hold_closed(self, ev: Event) -> None:
        if self.stale is not None:
            self.stale.on_close(ev)

    # -- per batch -------------------------------------------------------------------------

    def advance(self, active: Collection[int] | None = None, *, closing: bool = False) -> None:
        """Move the watermark (over the `active` partitions; None: all), release held-back
        events and take the decisions it has passed.

        When a source reports no active partition at all (every one idle and caught up), the
        watermark moves to the newest event time, as at the end of a replay: an idle stream
        takes the decisions due by then instead of holding them until traffic returns.
        """
        self.use_partition(self._partition)  # store the current partition's maximum
        if active is not None and not active:
            closing = True
        if closing:
            self.watermark.close()
            wm = self.watermark.value
        else:
            wm = self.watermark.advance(active)
        for ordered in (self.burst, self.spike):
            if ordered is not None:
                for incident in ordered.release(wm, inclusive=closing):
                    self._grew(incident)
                ordered.advance(wm)
        for deadline, rank, payload in self.timers.due(wm):
            self._grew(self._decide(rank, deadline, payload))
        if closing or wm - self._last_sweep >= _SWEEP_EVERY_US:
            self._sweep(wm)

    def _decide(self, rank: int, deadline: int, payload: object) -> Incident | None:
        if rank == _FTD and self.ftd is not None:
            assert isinstance(payload, Event)
            return self.ftd.decide(payload, self.attempts)
        if rank == _DUP and self.dup is not None:
            assert isinstance(payload, Attempt)
            return self.dup.decide(payload, deadline)
        if rank == _MISSING and self.missing is not None:
            assert isinstance(payload, Attempt)
            return self.missing.decide(payload)
        if rank == _STALE and self.stale is not None:
            assert isinstance(payload, str)
            return self.stale.decide(payload, deadline)
        return None

    def _sweep(self, wm: int) -> None:
        self._last_sweep = wm
        self.attempts.expire(wm)
        for detector in (self.ftd, self.large, self.stale):
            if detector is not None:
                detector.expire(wm)
        for ordered in (self.burst, self.spike):
            if ordered is not None:
                ordered.sweep(wm)

    def close(self) -> None:
        """End of input: the watermark moves to the largest event time; due decisions are taken."""
        self.advance(closing=True)

    def _grew(self, incident: Incident | None) -> None:
        if incident is not None:
            self._changed[incident.alert_id] = incident

    def take_alerts(self) -> tuple[list[Alert], list[Alert]]:
        """The incidents opened or grown since the last call, as alerts (newest version only),
        and the part of them that is new (first emitted now)."""
        alerts, new = [], []
        for incident in self._changed.values():
            alert = incident.to_alert()
            alerts.append(alert)
            if not incident.emitted:
                incident.emitted = True
                new.append(alert)
        self._changed.clear()
        return alerts, new

    def state_sizes(self) -> dict[str, int]:
        sizes = {
            "attempts": len(self.attempts),
            "dedup_ids": len(self.seen),
            "timers": len(self.timers),
            "held_back": sum(len(d) for d in (self.burst, self.spike) if d is not None),
        }
        if self.stale is not None:
            sizes["preauth_holds"] = len(self.stale)
        return sizes


# Kind -> handler, as plain functions: bound methods stored on the scorer would make it a
# reference cycle, and the CLI runs without the cycle collector (see cli._tune_gc).
_HANDLERS: Final[dict[str, Callable[[Scorer, Event], None]]] = {
    "auth_request": Scorer._on_request,
    "auth_approved": Scorer._on_outcome,
    "auth_declined": Scorer._on_outcome,
    "network_error": Scorer._on_outcome,
    "reversal": Scorer._on_reversal,
    "refund": Scorer._on_refund,
    "debit_posted": Scorer._on_debit,
    "preauth_hold": Scorer._on_hold,
    "preauth_release": Scorer._on_hold_closed,
    "preauth_completion": Scorer._on_hold_closed,
}
