"""The scorer: accepted events in, incidents out, on event time.

For each event, in this order: drop a redelivered `event_id`, move the watermark (counting a
late event), apply it to its purchase attempt (outcomes, reversals, refunds, debits), and hand
it to the hooks the detectors registered for its kind. After a batch, `advance` moves the
watermark, lets the ordered detectors count the events it has passed, takes every decision whose
deadline it has passed, and sweeps expired state. Nothing here reads the clock; `close` ends the
input (docs/detectors.md, "Time").

The scorer knows no detector by name: it builds those the policy enables, in registry order
(`policy.Detectors`), and loops over them.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from typing import Final

from monitor.core.alerts import Alert
from monitor.core.durations import us
from monitor.core.events import KINDS, Event
from monitor.scoring.attempts import Attempts
from monitor.scoring.detectors.base import (
    Deadline,
    Detector,
    Ordered,
    Shared,
)
from monitor.scoring.handlers import Handler, handlers
from monitor.scoring.incident import Incident
from monitor.scoring.policy import Policy
from monitor.scoring.state import NEVER, Order, SeenIds, Watermark

# Expiry sweeps walk quiet keys; every five minutes of event time keeps that off the per-event
# cost, and holds at most five minutes' worth of expired entries longer.
_SWEEP_EVERY_US: Final = 300_000_000


def _order(decision: tuple[Order, Incident | None]) -> Order:
    return decision[0]


class Scorer:
    """Owns the event-time state of one stream (one partition group) and its detectors."""

    def __init__(self, policy: Policy) -> None:
        limits = policy.state
        self.lateness = us(policy.allowed_lateness)
        self.watermark = Watermark(self.lateness)
        self.seen = SeenIds(us(limits.dedup_horizon), limits.max_dedup_ids)
        self.attempts = Attempts(us(limits.attempt_ttl), limits.max_attempts)
        shared = Shared(
            attempts=self.attempts,
            watermark=self.watermark,
            lateness_us=self.lateness,
            attempt_ttl_us=us(limits.attempt_ttl),
            cap=limits.max_keys,
            max_evidence=limits.max_evidence,
        )
        self.detectors: tuple[Detector, ...] = tuple(
            settings.build(shared, rank)
            for rank, settings in enumerate(policy.detectors.all())
            if settings.enabled
        )
        self._ordered = tuple(d for d in self.detectors if isinstance(d, Ordered))
        self._deadline = tuple(d for d in self.detectors if isinstance(d, Deadline))
        self._changed: dict[str, Incident] = {}
        self._handlers: dict[str, Handler] = handlers(self.detectors, self.attempts, self._changed)
        # A plain dict with every kind: a Counter's subscripts take the slower generic path.
        self.consumed: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._partition = 0
        self._partition_max = NEVER
        self._solo = True
        self.duplicates = 0
        self.late = 0
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
        # every event, as docs/detectors.md reads for a replay.
        self._solo = all(p == partition for p in (maxima if active is None else {*maxima, *active}))

    def process(self, ev: Event) -> None:
        """Apply one accepted event. A redelivered `event_id` is counted and ignored."""
        self.process_many((ev,))

    def process_many(self, events: Iterable[Event]) -> None:
        """Apply accepted events in order (the hot loop: one call per chunk, not per event)."""
        seen_add, consumed, mark = self.seen.add, self.consumed, self.watermark
        lateness, solo, partition_max = self.lateness, self._solo, self._partition_max
        handlers = self._handlers
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
            handlers[kind](ev)
        self._partition_max = partition_max

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
        changed = self._changed
        for ordered in self._ordered:
            for incident in ordered.release(wm, inclusive=closing):
                changed[incident.alert_id] = incident
            ordered.advance(wm)
        # Every deadline detector's due decisions, in (deadline, rank, key) order.
        due = heapq.merge(*(d.decisions(wm) for d in self._deadline), key=_order)
        for _, decided in due:
            if decided is not None:
                changed[decided.alert_id] = decided
        if closing or wm - self._last_sweep >= _SWEEP_EVERY_US:
            self._sweep(wm)

    def _sweep(self, wm: int) -> None:
        self._last_sweep = wm
        self.attempts.expire(wm)
        for detector in self.detectors:
            detector.sweep(wm)

    def close(self) -> None:
        """End of input: the watermark moves to the largest event time; due decisions are taken."""
        self.advance(closing=True)

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

    # -- what it holds and has seen ----------------------------------------------------------

    def state_sizes(self) -> dict[str, int]:
        sizes = {"attempts": len(self.attempts), "dedup_ids": len(self.seen)}
        sizes["timers"] = sum(len(d.timers) for d in self._deadline)
        for detector in self.detectors:
            for store, entries in detector.sizes().items():
                sizes[store] = sizes.get(store, 0) + entries
        return sizes

    def tallies(self) -> dict[str, int]:
        """The detectors' running counts (`small_attempts`: attempts at or below the small
        amount of card testing), for the metrics."""
        totals: dict[str, int] = {}
        for detector in self.detectors:
            for name, count in detector.tallies().items():
                totals[name] = totals.get(name, 0) + count
        return totals

    @property
    def small_attempts(self) -> int:
        return self.tallies().get("small_attempts", 0)
