"""Background traffic: ordinary purchases that must never make a detector fire.

Purchases start as a Poisson process whose rate follows the hour of the day; each picks a
terminal in proportion to its size. A purchase is an `auth_request` answered in 0.3-3 s by an
approval, a decline or (rarely) a network error. How each rule of `docs/detectors.md` is kept
quiet:

- `large_amount`: tickets are capped at 900,000 minor units.
- `small_amount_burst`: at most two attempts per purchase (a failure and its retry), and a card
  starts a purchase only 10 minutes after its previous one's last attempt (`CardPool`), so no
  card ever has more than two attempts in any 10 minutes.
- `terminal_failure_spike`: a terminal's network errors are at least 6 minutes apart, so no
  5-minute window holds two of them.
- `missing_reversal`: every network error is reversed 1-60 s later (timeout: 2 min).
- `failed_then_debited`: failed attempts are never debited; a retry gets a fresh `txn_ref`, is
  approved and is debited under its own reference, so no debit is ever unlinked.
- `duplicate_debit`: a reference is debited at most once.
- `stale_preauth`: holds are completed or released 0.5-20 h after they are placed (events past
  the end of the period are dropped, and then the 24 h deadline is past the end as well).

Attempts stay well inside the 6 h attempt time-to-live: debits come at most 2.5 h after the
approval, refunds at most 3 h after the debit.

With anomalies (`monitor.simulation.anomalies`), `Background` tells them every paid purchase (a
card's history) and lets them place their episodes at the start of each minute; they draw
nothing from its random stream, so the background is the same with or without them.
"""

from __future__ import annotations

import random
from bisect import bisect
from collections.abc import Iterator
from itertools import accumulate

from monitor.simulation.anomalies import Anomalies
from monitor.simulation.lines import (
    AUTH_APPROVED,
    AUTH_DECLINED,
    AUTH_REQUEST,
    DEBIT_POSTED,
    NETWORK_ERROR,
    PREAUTH_COMPLETION,
    PREAUTH_HOLD,
    PREAUTH_RELEASE,
    RC_APPROVED,
    REFUND,
    REVERSAL,
    EventQueue,
    Ids,
    Queued,
    response_code,
)
from monitor.simulation.world import (
    US_PER_H,
    US_PER_MIN,
    US_PER_S,
    CardPool,
    Terminal,
    World,
    diurnal,
    new_token,
)

P_NETWORK_ERROR = 0.003
P_DECLINE = 0.045
P_CANCEL = 0.003  # approved, then cancelled at the till: a reversal and no debit
P_REFUND = 0.01
P_PREAUTH = 0.35  # share of a pre-authorising merchant's flows that are holds
P_OUT_OF_ORDER = 0.03  # debits written after newer events, within the lateness
P_LATE = 0.0002  # debits written beyond the lateness (only with incidents)
NE_SPACING_US = 6 * US_PER_MIN
#: The n-th debits that are always written late (with incidents), so short runs have some.
FORCED_LATE = frozenset({25, 250, 2_500, 25_000})

# code, weight, chance the customer retries (and is then approved)
_DECLINES = (
    ("05", 30, 0.3), ("51", 25, 0.2), ("54", 5, 0.2), ("55", 15, 0.9),
    ("14", 3, 0.1), ("91", 12, 0.9), ("96", 10, 0.9),
)  # fmt: skip
_DECLINE_CUM = list(accumulate(w for _, w, _ in _DECLINES))
_DECLINE_RC = [response_code(code) for code, _, _ in _DECLINES]


class Background:
    """Generates background purchases in start-time order and hands out queued events as
    soon as no later purchase can arrive before them."""

    def __init__(
        self,
        world: World,
        cards: CardPool,
        queue: EventQueue,
        ids: Ids,
        rng: random.Random,
        *,
        start_us: int,
        lateness_us: int,
        late_events: bool,
        anomalies: Anomalies | None = None,
    ) -> None:
        self.world = world
        self.cards = cards
        self.queue = queue
        self.ids = ids
        self.rng = rng
        self.start_us = start_us
        self.end_us = queue.end_us
        self.late_events = late_events
        self.late_delay = (lateness_us + 3 * US_PER_MIN, lateness_us + 8 * US_PER_MIN)
        self.max_jitter_us = max(min(60 * US_PER_S, lateness_us // 2), 1)
        self.last_network_error = [-NE_SPACING_US] * len(world.terminals)
        self.debits = 0
        self.anomalies = anomalies  # told of every approved purchase, asked in every minute

    def run(self) -> Iterator[Queued]:
        """All events of the period in arrival order, including those queued by others."""
        self._closing_sale()
        terms = self.world.terminals
        cum = list(accumulate(t.rate_per_h for t in terms))
        total = cum[-1]
        rnd = self.rng.random
        expo = self.rng.expovariate
        minute = self.start_us
        while minute < self.end_us:
            nxt = min((minute // US_PER_MIN + 1) * US_PER_MIN, self.end_us)
            per_us = total * diurnal(minute) / US_PER_H
            if self.anomalies is not None:  # before this minute's purchases: history is past
                self.anomalies.at_minute(minute, nxt)
            # A Poisson process is memoryless: restarting it at each minute with that
            # minute's rate gives a piecewise-constant rate.
            t = minute + int(expo(per_us))
            while t < nxt:
                term = terms[bisect(cum, rnd() * total)]
                if term.merchant.profile.preauth and rnd() < P_PREAUTH:
                    self._preauth(t, term)
                else:
                    self._purchase(t, term)
                t += int(expo(per_us))
            yield from self.queue.release(nxt)
            minute = nxt
        yield from self.queue.drain()

    def _closing_sale(self) -> None:
        """An approved sale 3 s before the end, with a fresh card: it pins the file's last
        `event_time` to the end of the period, so every deadline the incidents rely on is
        passed by the final watermark, however quiet the last hour is."""
        t = self.end_us - 3 * US_PER_S
        if t < self.start_us:
            return
        term = self.world.terminals[0]
        card = new_token(self.rng)
        ref = self.ids.ref()
        amount = term.merchant.draw_amount(self.rng)
        self.queue.add(t, AUTH_REQUEST, term, card, ref, amount)
        self.queue.add(t + 500_000, AUTH_APPROVED, term, card, ref, amount, RC_APPROVED)

    def _purchase(self, t: int, term: Terminal) -> None:
        rnd = self.rng.random
        add = self.queue.add
        cards = self.cards
        idx = cards.pick(term.merchant, t)
        card = cards.token(idx)
        amount = term.merchant.draw_amount(self.rng)
        ref = self.ids.ref()
        add(t, AUTH_REQUEST, term, card, ref, amount)
        t_out = t + 300_000 + int(rnd() * 2_700_000)
        last_attempt = t
        paid = True
        u = rnd()
        if u < P_NETWORK_ERROR and t_out - self.last_network_error[term.index] >= NE_SPACING_US:
            self.last_network_error[term.index] = t_out
            add(t_out, NETWORK_ERROR, term, card, ref, amount)
            add(t_out + US_PER_S + int(rnd() * 59 * US_PER_S), REVERSAL, term, card, ref, amount)
            last_attempt = self._retry(t_out, term, card, amount)
        elif P_NETWORK_ERROR <= u < P_NETWORK_ERROR + P_DECLINE:
            i = bisect(_DECLINE_CUM, rnd() * _DECLINE_CUM[-1])
            add(t_out, AUTH_DECLINED, term, card, ref, amount, _DECLINE_RC[i])
            paid = rnd() < _DECLINES[i][2]
            if paid:
                last_attempt = self._retry(t_out, term, card, amount)
        else:
            self._approved(t_out, term, card, ref, amount)
        cards.release(idx, last_attempt)
        if paid and self.anomalies is not None:
            self.anomalies.history.paid(idx, card, term, amount)

    def _retry(self, t_fail: int, term: Terminal, card: str, amount: int) -> int:
        """The customer tries again 5-40 s after a failure, under a new reference, and is
        approved. Returns the retry's request time."""
        rnd = self.rng.random
        t = t_fail + 5 * US_PER_S + int(rnd() * 35 * US_PER_S)
        ref = self.ids.ref()
        self.queue.add(t, AUTH_REQUEST, term, card, ref, amount)
        self._approved(t + 300_000 + int(rnd() * 2_700_000), term, card, ref, amount)
        return t

    def _approved(self, t: int, term: Terminal, card: str, ref: str, amount: int) -> None:
        rnd = self.rng.random
        add = self.queue.add
        add(t, AUTH_APPROVED, term, card, ref, amount, RC_APPROVED)
        v = rnd()
        if v < P_CANCEL:
            add(t + 5 * US_PER_S + int(rnd() * 85 * US_PER_S), REVERSAL, term, card, ref, amount)
            return
        if rnd() < 0.55:  # posted online
            debit = t + 2 * US_PER_S + int(rnd() * 10 * US_PER_MIN)
        else:  # posted with the clearing batch
            debit = t + 10 * US_PER_MIN + int(rnd() * 140 * US_PER_MIN)
        if not add(debit, DEBIT_POSTED, term, card, ref, amount, delay_us=self._debit_delay()):
            return
        if v < P_CANCEL + P_REFUND:
            step = term.merchant.currency.step
            back = amount if rnd() < 0.7 else max(int(amount * rnd()) // step * step, step)
            refund = debit + 10 * US_PER_MIN + int(rnd() * 170 * US_PER_MIN)
            add(refund, REFUND, term, card, ref, back)

    def _debit_delay(self) -> int:
        """How long after its event time a debit reaches the reader: usually at once, a few
        within the lateness (out of order), and with incidents a few beyond it (late)."""
        self.debits += 1
        u = self.rng.random()
        if self.late_events and (self.debits in FORCED_LATE or u < P_LATE):
            return self.rng.randint(*self.late_delay)
        if u < P_OUT_OF_ORDER:
            return 1 + int(self.rng.random() * self.max_jitter_us)
        return 0

    def _preauth(self, t: int, term: Terminal) -> None:
        """A hold at check-in, completed (75 %) or released 0.5-20 h later."""
        rnd = self.rng.random
        merchant = term.merchant
        card = self.cards.token(self.cards.pick(merchant, t))
        amount = merchant.to_minor(20_000 + rnd() * 130_000)
        ref = self.ids.ref()
        add = self.queue.add
        add(t, PREAUTH_HOLD, term, card, ref, amount)
        close = t + US_PER_H // 2 + int(rnd() * 19.5 * US_PER_H)
        if rnd() < 0.75:
            final = max(int(amount * (0.5 + rnd() / 2)) // merchant.currency.step, 1)
            add(close, PREAUTH_COMPLETION, term, card, ref, final * merchant.currency.step)
        else:
            add(close, PREAUTH_RELEASE, term, card, ref, amount)
