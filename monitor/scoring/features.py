"""The anomaly model's features, defined once: for serving, for training and for the feature log.

Each `auth_request` gets one feature vector (`FEATURES`, versioned by `FEATURE_VERSION`),
computed when the watermark passes it, in event-time order, from the events before it: the
card's and the terminal's history, then the request itself is added to that history. Outcomes
(`auth_approved`, `auth_declined`, `network_error`) are added the same way, in the same order.
Appending later events to a stream never changes an earlier request's features
(tests/test_features.py proves it), and `posmon train` replays through this very code.

Memory is bounded per key, whatever the traffic: the windowed counts and means are running
aggregates, decayed exponentially with the window as time constant (a card's "attempts in 1 h"
is the sum of `exp(-age / 1 h)` over its attempts, so a burst of 6 attempts in a few minutes
counts about 6), the robust amount statistics use the card's last `_AMOUNTS` amounts, and the
distinct terminals, merchants and categories keep at most `_PLACES` entries each (the oldest
goes first). Cards and terminals quiet for `_TTL_US` are forgotten (`scoring.state.Expiring`).
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

from monitor.core.events import Event
from monitor.scoring.state import Expiring

FEATURE_VERSION: Final = "posmon-features/2"

FEATURES: Final[tuple[str, ...]] = (
    "card_attempts_1h",
    "card_attempts_1d",
    "card_attempts_7d",
    "card_attempts_30d",
    "card_mean_amount_1h",
    "card_mean_amount_1d",
    "card_mean_amount_7d",
    "card_mean_amount_30d",
    "amount_minor",
    "amount_ratio_30d",
    "amount_robust_z",
    "seconds_since_previous",
    "card_terminals_1h",
    "card_terminals_24h",
    "card_merchants_1h",
    "card_merchants_24h",
    "first_at_terminal",
    "first_at_mcc",
    "card_decline_ratio",
    "card_error_ratio",
    "terminal_attempts_1h",
    "terminal_error_ratio",
    "terminal_cards_1h",
    "hour_sin",
    "hour_cos",
    "weekend",
    "terminal_fraud_share_1d",
    "terminal_fraud_share_7d",
    "terminal_fraud_share_30d",
    "merchant_fraud_share_1d",
    "merchant_fraud_share_7d",
    "merchant_fraud_share_30d",
    "card_known_frauds",
)

# The features computed from the risk team's labels (`learn`): zero until a label is known.
LABEL_FEATURES: Final = FEATURES[26:]

_H: Final = 3_600_000_000  # one hour in microseconds
_DAY: Final = 24 * _H
_T1, _T2, _T3, _T4 = float(_H), float(_DAY), float(7 * _DAY), float(30 * _DAY)  # the windows
_OUTCOME_TAU: Final = float(7 * _DAY)  # the card's decline and error ratios
_TERMINAL_TAU: Final = float(_H)
_TTL_US: Final = 30 * _DAY  # a card or terminal quiet this long is forgotten
_NEVER_S: Final = 30 * 86_400.0  # seconds since the previous attempt of a card never seen
_AMOUNTS: Final = 16  # the card's last amounts, for the median and the MAD
_PLACES: Final = 32  # distinct terminals, merchants, categories kept per card
_TERMINAL_CARDS: Final = 256  # distinct cards kept per terminal
_Z_CAP: Final = 50.0
_TWO_PI_PER_DAY_S: Final = 2 * math.pi / 86_400
_LABEL_TTL_US: Final = 30 * _DAY  # a purchase can be labelled this long after it
_MARK_TTL_US: Final = 60 * _DAY  # a known fraud counts in the shares this long (e^-2 at 30 d)
_MARKS: Final = 256  # known frauds kept per terminal, merchant and card (the newest)
_FOREVER: Final = 2**62  # a mark not revoked
_exp = math.exp


class Outcomes:
    """Decayed counts of outcomes, declines and network errors, as of `at`."""

    __slots__ = ("at", "declines", "errors", "n")

    def __init__(self) -> None:
        self.at = 0
        self.n = self.declines = self.errors = 0.0

    def add(self, t: int, tau: float, *, declined: bool, failed: bool) -> None:
        if self.at and t > self.at:
            decay = _exp(-(t - self.at) / tau)
            self.n *= decay
            self.declines *= decay
            self.errors *= decay
        if t > self.at:
            self.at = t
        self.n += 1.0
        self.declines += declined
        self.errors += failed

    def ratios(self, t: int, tau: float) -> tuple[float, float]:
        """The decline and error ratios at `t`: `declines / (outcomes + 1)` and the same for
        errors (0 before any outcome)."""
        if not self.at:
            return 0.0, 0.0
        decay = _exp(-(t - self.at) / tau) if t > self.at else 1.0
        scale = decay / (self.n * decay + 1.0)
        return self.declines * scale, self.errors * scale


class CardHistory:
    """A card's running aggregates (times in epoch microseconds)."""

    __slots__ = (
        "amounts",
        "counts",
        "last",
        "mccs",
        "merchants",
        "outcomes",
        "sums",
        "terminals",
    )

    def __init__(self) -> None:
        self.last = 0  # time of the newest attempt
        self.counts = [0.0, 0.0, 0.0, 0.0]  # decayed attempts per window, at `last`
        self.sums = [0.0, 0.0, 0.0, 0.0]  # decayed amounts per window, at `last`
        self.amounts: deque[int] = deque(maxlen=_AMOUNTS)
        self.terminals: dict[str, int] = {}  # terminal -> newest attempt there
        self.merchants: dict[str, int] = {}
        self.mccs: dict[str, int] = {}
        self.outcomes = Outcomes()  # over 7 days


class Exposure:
    """A terminal's or merchant's attempts over 1, 7 and 30 days (decayed), at `last`: the
    denominators of the fraud shares."""

    __slots__ = ("day", "last", "month", "week")

    def __init__(self) -> None:
        self.last = 0
        self.day = self.week = self.month = 0.0

    def add(self, t: int) -> tuple[float, float, float]:
        """The attempts before `t`, decayed to it; then the attempt at `t` joins them."""
        if t > self.last:
            dt = t - self.last
            day = self.day * _exp(-dt / _T2)
            week = self.week * _exp(-dt / _T3)
            month = self.month * _exp(-dt / _T4)
            self.last = t
        else:
            day, week, month = self.day, self.week, self.month
        self.day, self.week, self.month = day + 1.0, week + 1.0, month + 1.0
        return day, week, month


class TerminalHistory:
    __slots__ = ("attempts", "cards", "exposure", "last", "outcomes")

    def __init__(self) -> None:
        self.last = 0
        self.attempts = 0.0  # decayed attempts (1 h), at `last`
        self.exposure = Exposure()
        self.cards: dict[str, int] = {}  # card -> newest attempt here, in the last hour
        self.outcomes = Outcomes()  # over 1 hour


# A known fraud: [the purchase's time, known from, revoked from] (a later genuine verdict
# revokes it), in epoch microseconds.
Mark = list[int]
# What a label needs of a purchase: its time, card, terminal and merchant.
Purchase = tuple[int, str, str, str]


def _remember(places: dict[str, int], key: str, t: int, cap: int) -> None:
    """Note `key` at `t`. The dict stays in the order of last use (a key used again moves to
    the end; requests come in event-time order), so at `cap` keys the first one goes."""
    seen = places.pop(key, None)
    if seen is None and len(places) >= cap:
        del places[next(iter(places))]
    places[key] = t if seen is None or t > seen else seen


def _since(places: dict[str, int], hour_ago: int, day_ago: int) -> tuple[float, float]:
    """How many of `places` were used since `hour_ago`, and since `day_ago`: read from the
    newest back, it stops at the first one older than a day."""
    hour = day = 0
    for seen in reversed(places.values()):
        if seen < day_ago:
            break
        day += 1
        if seen >= hour_ago:
            hour += 1
    return float(hour), float(day)


def _recent(places: dict[str, int], hour_ago: int) -> float:
    """Forget the keys last used before `hour_ago` (the oldest first); how many are left."""
    while places:
        first = next(iter(places))
        if places[first] >= hour_ago:
            break
        del places[first]
    return float(len(places))


def _robust_z(amount: int, amounts: deque[int]) -> float:
    """`amount` against the card's last amounts: (x - median) / (1.4826 MAD), the scale at least
    a tenth of the median (and one minor unit), capped at +-50; 0 with fewer than 3 amounts."""
    n = len(amounts)
    if n < 3:
        return 0.0
    ordered = sorted(amounts)
    half = n // 2
    median = ordered[half] if n % 2 else (ordered[half - 1] + ordered[half]) / 2
    deviations = sorted(abs(a - median) for a in ordered)
    mad = deviations[half] if n % 2 else (deviations[half - 1] + deviations[half]) / 2
    scale = max(1.4826 * mad, 0.1 * median, 1.0)
    z = (amount - median) / scale
    return _Z_CAP if z > _Z_CAP else -_Z_CAP if z < -_Z_CAP else z


class FeatureState:
    """Every card's and terminal's history; `request` gives a request's features and then adds
    it, `outcome` adds an outcome. Both must be called in event-time order."""

    __slots__ = (
        "_cap",
        "card_marks",
        "cards",
        "merchant_marks",
        "merchants",
        "purchases",
        "terminal_marks",
        "terminals",
    )

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self.cards: Expiring[CardHistory] = Expiring(_TTL_US, cap)
        self.terminals: Expiring[TerminalHistory] = Expiring(_TTL_US, cap)
        self.merchants: Expiring[Exposure] = Expiring(_TTL_US, cap)
        # The purchases a label may still name, oldest first (requests come in time order).
        self.purchases: dict[str, Purchase] = {}
        # The known frauds per terminal, merchant and card, by the purchase's event_id.
        self.terminal_marks: dict[str, dict[str, Mark]] = {}
        self.merchant_marks: dict[str, dict[str, Mark]] = {}
        self.card_marks: dict[str, dict[str, Mark]] = {}

    def __len__(self) -> int:
        return len(self.cards) + len(self.terminals) + len(self.merchants)

    def label(self, event_id: str, fraud: bool, known_at: int) -> bool:
        """The verdict on purchase `event_id`, known from `known_at`: counted by the label
        features of every request at `known_at` or later, never before (whatever the order the
        requests are computed in). False when the purchase is not (or no longer) held."""
        purchase = self.purchases.get(event_id)
        if purchase is None:
            return False
        t, card, terminal, merchant = purchase
        for store, key in (
            (self.terminal_marks, terminal),
            (self.merchant_marks, merchant),
            (self.card_marks, card),
        ):
            marks = store.get(key)
            mark = None if marks is None else marks.get(event_id)
            if fraud:
                if mark is not None and mark[1] <= known_at < mark[2]:
                    continue  # already known as fraud
                if marks is None:
                    marks = store[key] = {}
                marks.pop(event_id, None)
                if len(marks) >= _MARKS:  # the oldest purchase goes
                    del marks[min(marks, key=lambda e: marks[e][0])]
                marks[event_id] = [t, known_at, _FOREVER]
            elif mark is not None and known_at < mark[2]:
                mark[2] = max(known_at, mark[1])  # genuine after all: revoked from now on
        return True

    def request(self, ev: Event) -> list[float]:
        """The features of the `auth_request` `ev` (in `FEATURES` order), from the events
        before it; then `ev` joins the history."""
        t, amount = ev.t, ev.amount_minor
        card = self.cards.get_or_create(ev.card_id, t, CardHistory)
        terminal = self.terminals.get_or_create(ev.terminal_id, t, TerminalHistory)
        counts, sums = card.counts, card.sums
        # The card's windows, decayed to `t` (an event older than the newest one, released
        # late, counts as if it came at the newest time: no decay backwards).
        dt = t - card.last if t > card.last else 0
        d1, d2, d3, d4 = _exp(-dt / _T1), _exp(-dt / _T2), _exp(-dt / _T3), _exp(-dt / _T4)
        n1, n2, n3, n4 = counts[0] * d1, counts[1] * d2, counts[2] * d3, counts[3] * d4
        s1, s2, s3, s4 = sums[0] * d1, sums[1] * d2, sums[2] * d3, sums[3] * d4
        seen = card.last != 0
        m1 = s1 / n1 if n1 > 1e-9 else amount
        m2 = s2 / n2 if n2 > 1e-9 else amount
        m3 = s3 / n3 if n3 > 1e-9 else amount
        m4 = s4 / n4 if n4 > 1e-9 else amount
        hour_ago, day_ago = t - _H, t - _DAY
        places, merchants, mccs = card.terminals, card.merchants, card.mccs
        mcc = ev.mcc
        decline_ratio, error_ratio = card.outcomes.ratios(t, _OUTCOME_TAU)
        terminal_errors = terminal.outcomes.ratios(t, _TERMINAL_TAU)[1]
        tdt = t - terminal.last if t > terminal.last else 0
        tdecay = _exp(-tdt / _TERMINAL_TAU)
        terminals_1h, terminals_24h = _since(places, hour_ago, day_ago)
        merchants_1h, merchants_24h = _since(merchants, hour_ago, day_ago)
        # The terminal's and the merchant's attempts over 1, 7 and 30 days (this one joins).
        exposure = terminal.exposure.add(t)
        merchant = self.merchants.get_or_create(ev.merchant_id, t, Exposure).add(t)
        seconds = (t // 1_000_000) % 86_400
        angle = seconds * _TWO_PI_PER_DAY_S
        weekday = (t // _DAY + 3) % 7  # 1970-01-01 was a Thursday (Monday = 0)
        row = [
            n1,
            n2,
            n3,
            n4,
            m1,
            m2,
            m3,
            m4,
            float(amount),
            amount / m4 if m4 > 0 else 1.0,
            _robust_z(amount, card.amounts),
            (t - card.last) / 1e6 if seen and t > card.last else (0.0 if seen else _NEVER_S),
            terminals_1h,
            terminals_24h,
            merchants_1h,
            merchants_24h,
            0.0 if ev.terminal_id in places else 1.0,
            0.0 if mcc is None or mcc in mccs else 1.0,
            decline_ratio,
            error_ratio,
            terminal.attempts * tdecay,
            terminal_errors,
            _recent(terminal.cards, hour_ago),
            math.sin(angle),
            math.cos(angle),
            1.0 if weekday >= 5 else 0.0,
            *(
                self._from_labels(ev, exposure, merchant)
                if self.terminal_marks or self.merchant_marks or self.card_marks
                else _NO_LABELS
            ),
        ]
        # The request joins the history.
        counts[0], counts[1], counts[2], counts[3] = n1 + 1, n2 + 1, n3 + 1, n4 + 1
        sums[0], sums[1], sums[2], sums[3] = s1 + amount, s2 + amount, s3 + amount, s4 + amount
        if t > card.last:
            card.last = t
        card.amounts.append(amount)
        _remember(places, ev.terminal_id, t, _PLACES)
        _remember(merchants, ev.merchant_id, t, _PLACES)
        if mcc is not None:
            _remember(mccs, mcc, t, _PLACES)
        terminal.attempts = terminal.attempts * tdecay + 1.0
        if t > terminal.last:
            terminal.last = t
        _remember(terminal.cards, ev.card_id, t, _TERMINAL_CARDS)
        purchases = self.purchases  # what a label on it will need
        if len(purchases) >= self._cap:
            del purchases[next(iter(purchases))]
        purchases[ev.event_id] = (t, ev.card_id, ev.terminal_id, ev.merchant_id)
        return row

    def _from_labels(
        self, ev: Event, terminal: tuple[float, float, float], merchant: tuple[float, float, float]
    ) -> tuple[float, ...]:
        """The label features of request `ev`, given its terminal's and merchant's attempts."""
        t = ev.t
        terminal_marks = self.terminal_marks.get(ev.terminal_id)
        merchant_marks = self.merchant_marks.get(ev.merchant_id)
        card_marks = self.card_marks.get(ev.card_id)
        if terminal_marks is None and merchant_marks is None and card_marks is None:
            return _NO_LABELS
        return (
            *(_NO_SHARES if terminal_marks is None else _shares(terminal_marks, t, terminal)),
            *(_NO_SHARES if merchant_marks is None else _shares(merchant_marks, t, merchant)),
            0.0 if card_marks is None else _known(card_marks, t),
        )

    def outcome(self, ev: Event) -> None:
        """An attempt's outcome (approved, declined, network error) joins the history."""
        t, kind = ev.t, ev.kind
        declined, failed = kind == "auth_declined", kind == "network_error"
        card = self.cards.touch(ev.card_id, t)
        if card is not None:
            card.outcomes.add(t, _OUTCOME_TAU, declined=declined, failed=failed)
        terminal = self.terminals.touch(ev.terminal_id, t)
        if terminal is not None:
            terminal.outcomes.add(t, _TERMINAL_TAU, declined=declined, failed=failed)

    def expire(self, watermark: int) -> None:
        self.cards.expire(watermark)
        self.terminals.expire(watermark)
        self.merchants.expire(watermark)
        purchases, cutoff = self.purchases, watermark - _LABEL_TTL_US
        while purchases:
            first = next(iter(purchases))
            if purchases[first][0] >= cutoff:
                break
            del purchases[first]
        cutoff = watermark - _MARK_TTL_US
        for store in (self.terminal_marks, self.merchant_marks, self.card_marks):
            for key in [k for k, marks in store.items() if _prune(marks, cutoff)]:
                del store[key]


_NO_SHARES: Final = (0.0, 0.0, 0.0)
_NO_LABELS: Final = (0.0,) * 7


def _shares(
    marks: dict[str, Mark], t: int, counts: tuple[float, float, float]
) -> tuple[float, float, float]:
    """The share of known frauds among the attempts over 1, 7 and 30 days (both decayed the same
    way, by the purchase's age), counting only the frauds known at `t`."""
    f1 = f2 = f3 = 0.0
    for when, known, revoked in marks.values():
        if known <= t < revoked and when <= t:
            age = t - when
            f1 += _exp(-age / _T2)
            f2 += _exp(-age / _T3)
            f3 += _exp(-age / _T4)
    n1, n2, n3 = counts
    return f1 / max(n1, 1.0), f2 / max(n2, 1.0), f3 / max(n3, 1.0)


def _known(marks: dict[str, Mark], t: int) -> float:
    """The card's earlier purchases known at `t` as frauds."""
    return float(
        sum(1 for when, known, revoked in marks.values() if known <= t < revoked and when < t)
    )


def _prune(marks: dict[str, Mark], cutoff: int) -> bool:
    """Forget the frauds older than `cutoff`; whether none is left."""
    for event_id in [e for e, mark in marks.items() if mark[0] < cutoff]:
        del marks[event_id]
    return not marks
