"""The scorer: accepted events in, incidents out, on event time.

For each event, in this order: drop a redelivered `event_id` (refuse it as a `conflict` when its
content differs), move the watermark (counting a late event), apply it to its purchase attempt
(outcomes, reversals, refunds, debits), and hand it to the hooks the detectors registered for
its kind (an exception there refuses that one event as `internal`: no record stops the stream).
After a batch, `advance` moves the watermark, lets the ordered detectors count the events it has
passed, takes every decision whose deadline it has passed, and sweeps expired state. Nothing
here reads the clock; `close` ends the input (docs/detectors.md, "Time").

The scorer knows no detector by name: it builds those the policy enables, in registry order
(`policy.Detectors`), and loops over them.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Final

from monitor.core.alerts import Alert
from monitor.core.durations import us
from monitor.core.events import KINDS, Event, RejectReason
from monitor.core.labels import Label
from monitor.scoring.attempts import Attempts
from monitor.scoring.detectors.base import (
    Amounts,
    Deadline,
    Detector,
    Ordered,
    Shared,
    Stage,
)
from monitor.scoring.handlers import Handler, handlers
from monitor.scoring.handoff import Markers
from monitor.scoring.incident import Incident
from monitor.scoring.model import ModelSlot
from monitor.scoring.policy import Policy
from monitor.scoring.state import NEVER, Expiring, Order, SeenIds, Watermark
from monitor.scoring.tally import ModelTally

# Expiry sweeps walk quiet keys; every five minutes of event time keeps that off the per-event
# cost, and holds at most five minutes' worth of expired entries longer.
_SWEEP_EVERY_US: Final = 300_000_000
# Verdicts on alerts older than this find no purchase to mark (the features hold 30 days).
_EVIDENCE_TTL_US: Final = 30 * 86_400_000_000
# An exception's text in a dead letter: enough to find the bug, bounded whatever it holds.
_ERROR_CHARS: Final = 1000

# An event the scorer did not apply: (its index in the events given, reason, error).
Refused = tuple[int, RejectReason, str]


def _order(decision: tuple[Order, Incident | None]) -> Order:
    return decision[0]


def _refuse(
    refused: list[Refused], events: Sequence[Event], ev: Event, reason: RejectReason, error: str
) -> None:
    """Note `ev` as refused, with its index in `events`, found here rather than counted on the
    hot path: an equal event between the last refused one and `ev` would have made `ev` a
    redelivery, so the first equal one from there is `ev` itself."""
    start = refused[-1][0] + 1 if refused else 0
    refused.append((events.index(ev, start), reason, error))


class Scorer:
    """Owns the event-time state of one stream (one partition group) and its detectors."""

    def __init__(
        self, policy: Policy, model: ModelSlot | None = None, *, stage: Stage = "all"
    ) -> None:
        """`model`: the anomaly model's slot (None: no model, no features computed). `stage`:
        the detectors of one stage of the partitioned design only (`Stage`); "all" for one
        monitor that holds every event."""
        limits = policy.state
        self._model = model
        self.lateness = us(policy.allowed_lateness)
        self.watermark = Watermark(self.lateness, us(policy.max_future_skew))
        self.seen = SeenIds(us(limits.dedup_horizon), limits.max_dedup_ids)
        self.attempts = Attempts(us(limits.attempt_ttl), limits.max_attempts)
        shared = Shared(
            attempts=self.attempts,
            watermark=self.watermark,
            lateness_us=self.lateness,
            attempt_ttl_us=us(limits.attempt_ttl),
            cap=limits.max_keys,
            max_evidence=limits.max_evidence,
            evidence=Expiring(_EVIDENCE_TTL_US, limits.max_keys),
            model=model,
            stage=stage,
        )
        self.stage = stage
        self.evidence = shared.evidence
        self.detectors: tuple[Detector, ...] = tuple(
            settings.build(shared, rank)
            for rank, settings in enumerate(policy.detectors.all())
            if settings.enabled
            and (stage == "all" or stage in settings.stages())
            and settings.wanted(shared)
        )
        self._ordered = tuple(d for d in self.detectors if isinstance(d, Ordered))
        self._deadline = tuple(d for d in self.detectors if isinstance(d, Deadline))
        self._changed: dict[str, Incident] = {}
        self._handlers: dict[str, Handler] = {}
        self.rewire(model)
        # A plain dict with every kind: a Counter's subscripts take the slower generic path.
        self.consumed: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._partition = 0
        self._partition_max = NEVER
        # A card stage never moves its watermark from its events (a few of every stream's):
        # its merchant stages' frontiers do (`follow`).
        self._solo = stage != "card"
        self._sources: dict[int, int] = {}  # a card stage's source partitions' frontiers
        # A card stage's markers, as read from the cards topic (part of its state).
        self.markers = Markers() if stage == "card" else None
        self.duplicates = 0
        self.late = 0
        self.labels_unused = 0  # labels given with no detector to use them (no model)
        self._last_sweep = NEVER

    def rewire(self, model: ModelSlot | None = None) -> None:
        """Build the per-kind handlers over the current stores (again, after a snapshot load,
        which gives back the `model` slot: the model is not part of the state)."""
        self._model = model
        if model is not None:
            for detector in self.detectors:
                attach = getattr(detector, "attach", None)
                if attach is not None:
                    attach(model)
        self._handlers = handlers(self.detectors, self.attempts, self._changed)

    def wanted(self) -> dict[str, tuple[tuple[int, float], ...]]:
        """The events its detectors take: per kind, the bands of amounts (a kind absent: none).
        A card stage is given only these (docs/streaming.md, "Scale-out")."""
        bands: dict[str, list[tuple[int, float]]] = {}
        for detector in self.detectors:
            hooks = detector.hooks()
            for kind, hook in hooks.on_event.items():
                if isinstance(hook, Amounts):
                    high = math.inf if hook.at_most is None else hook.at_most
                    bands.setdefault(kind, []).append((hook.at_least, high))
                else:
                    bands.setdefault(kind, []).append((0, math.inf))
            for kind in hooks.on_attempt:
                bands.setdefault(kind, []).append((0, math.inf))
        return {kind: tuple(sorted(set(b))) for kind, b in bands.items()}

    @property
    def model(self) -> ModelSlot | None:
        return self._model

    @property
    def model_tally(self) -> ModelTally | None:
        return None if self._model is None else self._model.tally

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
        self._solo = self.stage != "card" and all(
            p == partition for p in (maxima if active is None else {*maxima, *active})
        )

    def process(self, ev: Event) -> list[Refused]:
        """Apply one accepted event, as `process_many` does."""
        return self.process_many((ev,))

    def process_many(self, events: Sequence[Event]) -> list[Refused]:
        """Apply accepted events in order (the hot loop: one call per chunk, not per event).

        Returns those it refused, for the dead letters: a known `event_id` whose content differs
        from the first one's (`conflict`), an event a handler raised on (`internal`).
        """
        refused: list[Refused] = []
        seen_add, consumed, mark = self.seen.add, self.consumed, self.watermark
        lateness, solo, partition_max = self.lateness, self._solo, self._partition_max
        handlers, skew = self._handlers, mark.skew
        # At most the frontier plus the skew: only an event past it needs the exact check.
        limit = partition_max + skew
        for ev in events:
            watermark = mark.value
            if not seen_add(ev.event_id, watermark, hash(ev)):
                if self.seen.fingerprint_of(ev.event_id) in (hash(ev), None):
                    self.duplicates += 1
                else:
                    error = f"event_id {ev.event_id!r} was seen before with other content"
                    _refuse(refused, events, ev, "conflict", error)
                continue
            kind = ev.kind
            consumed[kind] += 1
            t = ev.t
            if t < watermark:
                self.late += 1
            if t > partition_max:
                if t > limit:
                    # Rare (once per skew of event time): the limit is brought up to date; a
                    # clock far ahead of its partition (or its first event) moves the frontier
                    # only with the rest of the traffic.
                    if t - partition_max > skew:
                        partition_max = mark.ahead(
                            self._partition, partition_max, t, ev.terminal_id
                        )
                    else:
                        partition_max = t
                    limit = partition_max + skew
                else:
                    partition_max = t
                if solo and partition_max - lateness > watermark:
                    # One partition (a replay): the watermark follows the frontier.
                    mark.value = partition_max - lateness
            try:
                handlers[kind](ev)
            except Exception as exc:  # one event's bug must not stop the stream
                consumed[kind] -= 1
                error = f"{type(exc).__name__}: {exc}"[:_ERROR_CHARS]
                _refuse(refused, events, ev, "internal", error)
        self._partition_max = partition_max
        return refused

    def learn(self, labels: Iterable[Label]) -> None:
        """Take the risk team's verdicts (`monitor.core.labels`). Each one is used from its
        `known_at` onwards (when the watermark passes it), never for an event before; the
        detectors that use labels count what became of each (`tallies`, `labels_*`)."""
        learners = [d.learn for d in self.detectors if hasattr(d, "learn")]
        if not learners:
            self.labels_unused += sum(1 for _ in labels)
            return
        given = list(labels)
        for learn in learners:
            learn(given)

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
        # It may have taken in times that were ahead of the current partition.
        self._partition_max = self.watermark.maxima.get(self._partition, NEVER)
        self._take_due(wm, closing)

    def frontiers(self) -> dict[int, int]:
        """The newest event time of each partition it holds (after `advance`): the markers a
        merchant stage gives the card stage with each batch. A card stage's: those it follows,
        of the events partitions."""
        return dict(self._sources if self.stage == "card" else self.watermark.maxima)

    def follow(
        self,
        frontiers: Mapping[int, int],
        active: Collection[int] | None = None,
        *,
        closing: bool = False,
    ) -> None:
        """A card stage's `advance`: take the source partitions' frontiers its merchant stages
        gave (`frontiers`), move the watermark to the smallest over the `active` source
        partitions (None: every one that has spoken) less the lateness, exactly as one monitor
        holding every partition would, then release and decide. An active partition that has
        not spoken yet holds it where it is; none active (every one idle), or `closing`, moves
        it to the newest frontier, as at the end of a replay."""
        sources = self._sources
        for partition, t in frontiers.items():
            if t > sources.get(partition, NEVER):
                sources[partition] = t
        watermark = self.watermark
        if closing or (active is not None and not active):
            closing = True
            if sources:
                watermark.value = max(watermark.value, *sources.values())
        elif active is None or all(p in sources for p in active):
            times = [sources[p] for p in (sources if active is None else active)]
            if times and min(times) - self.lateness > watermark.value:
                watermark.value = min(times) - self.lateness
        self._take_due(watermark.value, closing)

    def _take_due(self, wm: int, closing: bool) -> None:
        """Release the held-back events the watermark `wm` has passed, take the decisions it has
        passed, sweep."""
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
        self.evidence.expire(wm)
        for detector in self.detectors:
            detector.sweep(wm)

    def close(self) -> None:
        """End of input: the watermark moves to the newest event time of the frontier (not to an
        event ahead of it; a card stage's: the newest its merchant stages gave); due decisions
        are taken."""
        if self.stage == "card":
            self.follow({}, closing=True)
        else:
            self.advance(closing=True)

    def take_alerts(self) -> tuple[list[Alert], list[Alert]]:
        """The incidents opened or grown since the last call, as alerts (newest version only),
        and the part of them that is new (first emitted now)."""
        alerts, new = [], []
        evidence = self.evidence
        # A version's revision is the watermark it was taken at, made to grow by at least one
        # per version (docs/contract.md, "Alert"): two owners of a partition compare by how far
        # in event time each had decided.
        watermark = self.watermark.value
        for incident in self._changed.values():
            incident.revision = max(watermark, incident.revision + 1)
            alert = incident.to_alert()
            alerts.append(alert)
            evidence.put(alert.alert_id, incident.last_seen, tuple(alert.event_ids))
            if not incident.emitted:
                incident.emitted = True
                new.append(alert)
        self._changed.clear()
        return alerts, new

    # -- what it holds and has seen ----------------------------------------------------------

    def state_sizes(self) -> dict[str, int]:
        sizes = {
            "attempts": len(self.attempts),
            "dedup_ids": len(self.seen),
            "alert_evidence": len(self.evidence),
        }
        sizes["timers"] = sum(len(d.timers) for d in self._deadline)
        for detector in self.detectors:
            for store, entries in detector.sizes().items():
                sizes[store] = sizes.get(store, 0) + entries
        return sizes

    def tallies(self) -> dict[str, int]:
        """The detectors' running counts (`small_attempts`: attempts at or below the small
        amount of card testing), for the metrics."""
        totals: dict[str, int] = {"labels_unused": self.labels_unused}
        for detector in self.detectors:
            for name, count in detector.tallies().items():
                totals[name] = totals.get(name, 0) + count
        return totals

    @property
    def small_attempts(self) -> int:
        return self.tallies().get("small_attempts", 0)
