"""Purchase attempts: everything known about one `txn_ref`, shared by the debit rules.

An attempt's *first outcome* is the earliest (by event time, then event id) of its
`auth_approved`, `auth_declined` and `network_error` events; it is *failed* when that first
outcome is a decline or a network error (docs/detectors.md, "Attempts"). The scorer applies
every outcome, reversal, refund and debit to its attempt before any detector sees the event;
what a detector concludes about an attempt it keeps in its own `Marks`.

A reversal or refund (a *give-back*) is kept whole on the attempt of the `txn_ref` it names,
because whether it settles anything depends on more than that reference: it must be for the
same card and in the same currency as the money it would give back (`refusal`), and it gives
back at most its own `amount_minor` (docs/detectors.md, "Settlement"). One that names a reference
but not its card is not trusted: anyone can write a `txn_ref` into an event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator
from typing import Final, Generic, Literal, TypeVar

from monitor.core.events import Event

V = TypeVar("V")

FAILURES = frozenset({"auth_declined", "network_error"})
OUTCOMES = frozenset({"auth_approved", "auth_declined", "network_error"})
GIVE_BACKS = frozenset({"reversal", "refund"})
# The kinds the scorer applies to a purchase attempt before any detector sees them.
ATTEMPT_KINDS = OUTCOMES | GIVE_BACKS | {"debit_posted"}

# Why a give-back naming a reference settles nothing there: the label values of
# `posmon_settlements_ignored_total` (bounded: never an id).
IgnoreReason = Literal["card_mismatch", "currency_mismatch"]
IGNORE_REASONS: Final[tuple[IgnoreReason, ...]] = ("card_mismatch", "currency_mismatch")


def refusal(give_back: Event, charge: Event) -> IgnoreReason | None:
    """Why `give_back` cannot give back the money of `charge` (a debit, or the outcome of the
    attempt), or None when it can: it must be for the same card, in the same currency."""
    if give_back.card_id != charge.card_id:
        return "card_mismatch"
    if give_back.currency != charge.currency:
        return "currency_mismatch"
    return None


def ignored_details(refused: Iterable[tuple[Event, IgnoreReason]], cap: int) -> list[object]:
    """`details.settlements_ignored` of an alert: each give-back refused for it once, in
    (time, event id) order, at most `cap` of them; its event id, kind and reason, never its
    card."""
    seen: dict[str, tuple[Event, IgnoreReason]] = {}
    for give_back, reason in refused:
        seen.setdefault(give_back.event_id, (give_back, reason))
    ordered = sorted(seen.values(), key=lambda entry: (entry[0].t, entry[0].event_id))
    return [
        {"event_id": g.event_id, "kind": g.kind, "reason": reason} for g, reason in ordered[:cap]
    ]


class Attempt:
    """What the monitor holds about one purchase attempt. Lists stay None until needed."""

    __slots__ = (
        "approved",
        "card_id",
        "debits",
        "first_error",
        "first_outcome",
        "give_backs",
        "last",
        "merchant_id",
        "refused",
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
        # Its reversals and refunds, in arrival order, whoever sent them (see `refusal`).
        self.give_backs: list[Event] | None = None
        # The event ids of its give-backs already counted as ignored (`Attempts.refuse`).
        self.refused: set[str] | None = None

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
        self,
        deadline: int,
        *,
        refunds: bool = True,
        inclusive: bool = False,
        like: Event | None = None,
    ) -> int:
        """How many reversals (and refunds) have an event time before `deadline`; with `like`,
        only those that can give back its money (same card, same currency: `refusal`)."""
        n = 0
        for g in self.give_backs or ():
            if (g.t < deadline or (inclusive and g.t == deadline)) and (
                refunds or g.kind == "reversal"
            ):
                n += like is None or refusal(g, like) is None
        return n


class Attempts:
    """Attempts by `txn_ref`, with an event-time horizon and a hard cap.

    The same expiry as `state.Expiring` (checked in creation order, kept alive by use, a hard
    cap), specialised: the attempt carries its own last-use time, which spares two allocations
    and an indirection on the path every outcome, debit and reversal takes.
    """

    __slots__ = ("_by_ref", "_cap", "_order", "_ttl", "evicted", "ignored")

    def __init__(self, ttl_us: int, cap: int) -> None:
        self._ttl, self._cap = ttl_us, cap
        self._by_ref: dict[str, Attempt] = {}
        self._order: deque[tuple[int, str]] = deque()
        self.evicted = 0
        # Give-backs a detector refused for settlement, by reason, each counted once.
        self.ignored: dict[str, int] = dict.fromkeys(IGNORE_REASONS, 0)

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
        elif kind in GIVE_BACKS:
            if attempt.give_backs is None:
                attempt.give_backs = [ev]
            else:
                attempt.give_backs.append(ev)
        else:
            attempt.on_outcome(ev)
        return attempt

    def refuse(self, give_back: Event, reason: IgnoreReason) -> None:
        """Count `give_back` as ignored for settlement (once, however many rules refuse it:
        it is remembered on the attempt of the reference it names, while that lives)."""
        attempt = self._by_ref.get(give_back.txn_ref)
        if attempt is not None:
            refused = attempt.refused
            if refused is None:
                refused = attempt.refused = set()
            elif give_back.event_id in refused:
                return
            refused.add(give_back.event_id)
        self.ignored[reason] += 1

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
