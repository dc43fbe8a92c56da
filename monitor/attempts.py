"""Purchase attempts: everything known about one `txn_ref`, shared by the debit detectors.

An attempt's *first outcome* is the earliest (by event time, then event id) of its
`auth_approved`, `auth_declined` and `network_error` events; it is *failed* when that first
outcome is a decline or a network error. See docs/detectors.md.
"""

from __future__ import annotations

from collections import deque

from monitor.alerts import Incident
from monitor.events import Event
from monitor.state import Expiring

FAILURES = frozenset({"auth_declined", "network_error"})
OUTCOMES = frozenset({"auth_approved", "auth_declined", "network_error"})


class Attempt:
    """What the monitor holds about one purchase attempt. Lists stay None until needed."""

    __slots__ = (
        "approved",
        "card_id",
        "debits",
        "duplicate",
        "error_decided",
        "first_error",
        "first_outcome",
        "last",
        "matched",
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
        self.matched = False
        self.error_decided = False
        self.duplicate: Incident | None = None
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

    def add_reversal(self, t: int) -> None:
        if self.reversals is None:
            self.reversals = [t]
        else:
            self.reversals.append(t)

    def add_refund(self, t: int) -> None:
        if self.refunds is None:
            self.refunds = [t]
        else:
            self.refunds.append(t)

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
    """Attempts by `txn_ref`, plus the failed ones by card, terminal and amount (manual debits).

    The same expiry as `state.Expiring` (checked in creation order, kept alive by use, a hard
    cap), specialised: the attempt carries its own last-use time, which spares two allocations
    and an indirection on the path every outcome, debit and reversal takes.
    """

    __slots__ = ("_by_ref", "_cap", "_order", "_ttl", "evicted", "failed_by_key")

    def __init__(self, ttl_us: int, cap: int) -> None:
        self._ttl, self._cap = ttl_us, cap
        self._by_ref: dict[str, Attempt] = {}
        self._order: deque[tuple[int, str]] = deque()
        self.evicted = 0
        self.failed_by_key: Expiring[list[Attempt]] = Expiring(ttl_us, cap)

    def __len__(self) -> int:
        return len(self._by_ref)

    def get(self, txn_ref: str) -> Attempt | None:
        return self._by_ref.get(txn_ref)

    def touch(self, ev: Event) -> Attempt:
        """The attempt of `ev`, created if new, marked as used at the event's time."""
        attempt = self._by_ref.get(ev.txn_ref)
        if attempt is None:
            if len(self._by_ref) >= self._cap:
                self._evict_oldest()
            attempt = self._by_ref[ev.txn_ref] = Attempt(ev)
            self._order.append((ev.t, ev.txn_ref))
        elif ev.t > attempt.last:
            attempt.last = ev.t
        return attempt

    def _evict_oldest(self) -> None:
        while self._order:
            _, ref = self._order.popleft()
            if self._by_ref.pop(ref, None) is not None:
                self.evicted += 1
                return

    def index_failure(self, attempt: Attempt, ev: Event) -> None:
        """Index a failed attempt for unlinked debits with the same card, terminal and amount."""
        key = failure_key(ev.card_id, ev.terminal_id, ev.amount_minor)
        candidates = self.failed_by_key.get_or_create(key, ev.t, list)
        if attempt not in candidates:
            candidates.append(attempt)

    def unlinked_match(self, debit: Event, window_us: int) -> Attempt | None:
        """The latest unmatched failed attempt whose failure lies in [debit - window, debit]."""
        candidates = self.failed_by_key.get(
            failure_key(debit.card_id, debit.terminal_id, debit.amount_minor)
        )
        best: Attempt | None = None
        best_key: tuple[int, str] | None = None
        for attempt in candidates or ():
            first = attempt.first_outcome
            if attempt.matched or first is None or first.kind not in FAILURES:
                continue
            if first.t <= debit.t <= first.t + window_us:
                key = (first.t, first.event_id)
                if best_key is None or key > best_key:
                    best, best_key = attempt, key
        return best

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
        self.failed_by_key.expire(watermark)


def failure_key(card_id: str, terminal_id: str, amount_minor: int) -> str:
    return f"{card_id}\x1f{terminal_id}\x1f{amount_minor}"
