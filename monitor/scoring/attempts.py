"""Purchase attempts: everything known about one `txn_ref`, shared by the debit rules.

An attempt's *first outcome* is the earliest (by event time, then event id) of its
`auth_approved`, `auth_declined` and `network_error` events; it is *failed* when that first
outcome is a decline or a network error (docs/detectors.md, "Attempts"). The scorer applies
every outcome, reversal, refund and debit to its attempt before any detector sees the event;
what a detector concludes about an attempt it keeps in its own `Marks`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

from monitor.core.events import Event

V = TypeVar("V")

FAILURES = frozenset({"auth_declined", "network_error"})
OUTCOMES = frozenset({"auth_approved", "auth_declined", "network_error"})
# The kinds the scorer applies to a purchase attempt before any detector sees them.
ATTEMPT_KINDS = OUTCOMES | {"reversal", "refund", "debit_posted"}


class Attempt:
    """What the monitor holds about one purchase attempt. Lists stay None until needed."""

    __slots__ = (
        "approved",
        "card_id",
        "debits",
        "first_error",
        "first_outcome",
        "last",
        "merchant_id",
        "refunds",
        "reversals",
        "terminal_id",
        "txn_ref",
    )

    def __init__(self, ev: Event) -> None:
        self.last = ev.t  # the newest event time of the attempt: it expires attempt_ttl after
        self.txn_ref = ev.txn_ref
        self.card_id = ev.card_id
        self.terminal_id = ev.terminal_id
        self.merchant_id = ev.merchant_id
        self.first_outcome: Event | None = None
        self.first_error: Event | None = None
        self.approved = False
        self.debits: list[Event] | None = None
        self.reversals: list[int] | None = None
        self.refunds: list[int] | None = None

    @property
    def failed(self) -> bool:
        first = self.first_outcome
        return first is not None and first.kind in FAILURES

    def on_outcome(self, ev: Event) -> bool:
        """Record an outcome; True when it is the attempt's first outcome so far."""
        if ev.kind == "auth_approved":
            self.approved = True
        elif ev.kind == "network_error":
            first_error = self.first_error
            if first_error is None or (ev.t, ev.event_id) < (first_error.t, first_error.event_id):
                self.first_error = ev
        first = self.first_outcome
        if first is None or (ev.t, ev.event_id) < (first.t, first.event_id):
            self.first_outcome = ev
            return True
        return False

    def add_debit(self, ev: Event) -> list[Event]:
        """Record a debit; returns the attempt's debits sorted by (time, event id)."""
        if self.debits is None:
            self.debits = [ev]
        else:
            self.debits.append(ev)
            self.debits.sort(key=lambda d: (d.t, d.event_id))
        return self.debits

    def reversed_before(
        self, deadline: int, *, refunds: bool = True, inclusive: bool = False
    ) -> int:
        """How many reversals (and refunds) have an event time before `deadline`."""
        n = 0
        for times in (self.reversals, self.refunds if refunds else None):
            if times:
                n += sum(1 for t in times if t < deadline or (inclusive and t == deadline))
        return n


class Attempts:
    """Attempts by `txn_ref`, with an event-time horizon and a hard cap.

    The same expiry as `state.Expiring` (checked in creation order, kept alive by use, a hard
    cap), specialised: the attempt carries its own last-use time, which spares two allocations
    and an indirection on the path every outcome, debit and reversal takes.
    """

    __slots__ = ("_by_ref", "_cap", "_order", "_ttl", "evicted")

    def __init__(self, ttl_us: int, cap: int) -> None:
        self._ttl, self._cap = ttl_us, cap
        self._by_ref: dict[str, Attempt] = {}
        self._order: deque[tuple[int, str]] = deque()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._by_ref)

    def get(self, txn_ref: str) -> Attempt | None:
        return self._by_ref.get(txn_ref)

    def record(self, ev: Event) -> Attempt:
        """Apply an outcome, reversal, refund or debit to its attempt, created if new and
        marked as used at the event's time; return the attempt. One method, not two: this runs
        for every attempt event, and a call less is measurable."""
        attempt = self._by_ref.get(ev.txn_ref)
        if attempt is None:
            if len(self._by_ref) >= self._cap:
                self._evict_oldest()
            attempt = self._by_ref[ev.txn_ref] = Attempt(ev)
            self._order.append((ev.t, ev.txn_ref))
        elif ev.t > attempt.last:
            attempt.last = ev.t
        kind = ev.kind
        if kind == "debit_posted":
            attempt.add_debit(ev)
        elif kind == "reversal":
            if attempt.reversals is None:
                attempt.reversals = [ev.t]
            else:
                attempt.reversals.append(ev.t)
        elif kind == "refund":
            if attempt.refunds is None:
                attempt.refunds = [ev.t]
            else:
                attempt.refunds.append(ev.t)
        else:
            attempt.on_outcome(ev)
        return attempt

    def _evict_oldest(self) -> None:
        while self._order:
            _, ref = self._order.popleft()
            if self._by_ref.pop(ref, None) is not None:
                self.evicted += 1
                return

    def expire(self, watermark: int) -> None:
        cutoff = watermark - self._ttl
        order, by_ref = self._order, self._by_ref
        while order and order[0][0] < cutoff:
            _, ref = order.popleft()
            attempt = by_ref.get(ref)
            if attempt is None:
                continue
            if attempt.last < cutoff:
                del by_ref[ref]
            else:
                order.append((attempt.last, ref))


class Marks(Generic[V]):
    """What one detector concludes about attempts (a decision taken, an alert fired), kept
    exactly as long as the attempt itself: a mark of an expired or evicted attempt is gone,
    even when a new attempt with the same `txn_ref` appears."""

    __slots__ = ("_attempts", "_marks")

    def __init__(self, attempts: Attempts) -> None:
        self._attempts = attempts
        self._marks: dict[str, tuple[Attempt, V]] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def get(self, attempt: Attempt) -> V | None:
        entry = self._marks.get(attempt.txn_ref)
        return entry[1] if entry is not None and entry[0] is attempt else None

    def put(self, attempt: Attempt, value: V) -> None:
        self._marks[attempt.txn_ref] = (attempt, value)

    def values(self) -> Iterator[V]:
        return (value for _, value in self._marks.values())

    def sweep(self) -> None:
        """Forget the marks of attempts the store no longer holds."""
        held = self._attempts.get
        gone = [ref for ref, (attempt, _) in self._marks.items() if held(ref) is not attempt]
        for ref in gone:
            del self._marks[ref]
