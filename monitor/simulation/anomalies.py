"""Labelled anomalies: spending that no rule names, and compromised terminals, for the anomaly
model (and the labels that teach it) to find.

Four kinds (their names are part of the labels file's contract); the first three are behaviour
anomalies, episodes of attempts added to the traffic:

- `compromised_card`: a card with an ordinary history (it has paid before, at its usual
  merchants) starts spending 4-10 times its usual ticket: 3-5 purchases 20-90 min apart, at its
  usual terminals or at new ones of merchants whose goods resell well, in its usual currency;
- `distant_spree`: a card pays at 5-9 terminals of merchants it never used within about an hour
  (40-70 min), abroad (another currency than its usual merchants') where there is room, for 1-3
  times those merchants' usual ticket;
- `night_velocity`: a card makes 3-6 attempts at different terminals, 30 s to 3 min apart,
  starting between 00:00 and 04:40 UTC, for ordinary tickets;
- `compromised_terminal` (the Fraud Detection Handbook's scenario 2): a terminal is compromised
  (skimmed) and, for the next `COMPROMISED_FOR_US` (14 days), every `auth_request` at it is
  labelled, whoever made it. It adds no event and changes none: the attempts are the ones the
  terminal would see anyway (background purchases and retries, and any incident or near-miss
  attempt a scene places there), so nothing in the events tells them apart; only the delayed
  labels reveal the terminal. An attempt there that is already a behaviour anomaly keeps its own
  label (one label per event).

No rule fires on the behaviour anomalies (`docs/detectors.md`, default policy): every anomalous
attempt is an ordinary approved purchase (an `auth_request`, its approval 0.3-3 s later, one debit
posted online or with the clearing batch as background posts them, never reversed nor refunded),
priced at least `MIN_AMOUNT` (twice `small_amount_burst`'s 500) and at most `BACKGROUND_AMOUNT_CAP`
(below `large_amount`'s 1,000,000), at background terminals only (never a spike's dedicated one, so
no error ratio is diluted), and without any event in the period's last 3 s.

Rate: about `ATTEMPT_SHARE` (one in 1,000) behaviour-anomalous attempts per background purchase, a
third for each kind. The two daytime kinds follow the traffic of the day; `night_velocity` spreads
evenly over the night hours, with as many attempts a day as each of the others. Episodes are placed
by stratified sampling of that intensity over the period with a randomised rounding of their
expected number, so a run holds close to its expectation (a 2 h run only a few, none at night).

Compromised terminals: `TERMINALS_PER_DAY` (one every two days; `SimulationSpec`'s
`compromised_terminals_per_day`, 0 disables) new ones, at times spread evenly over the period
(stratified, the expected number rounded at random: a 168 h run has 3 or 4, a 2 h run rarely one),
each a different terminal with steady traffic: a background terminal of the world's quietest size (8
purchases an hour at the daily peak: about 100 `auth_request`s a day, 4-8 an hour from 08:00 to
20:00 UTC, one every few hours at night) of a merchant without pre-authorisations (whose holds are
no `auth_request`s). The quietest ones keep the labelled share low: a compromise labels about 1,400
attempts over its 14 days, and a 168 h run at the default scale about 1 % of its `auth_request`s
(seed 202: 1,093 of 96,303), ten times the behaviour anomalies' share. The compromises depend only
on the seed, the world, the period and the rate (`compromise_plan`).

Each anomalous `auth_request` gets one label, known to analysts a week after the fact:
`{"type": "anomaly", "event_id", "label": 1, "kind", "known_at"}`.

Independence: the anomalies draw from a random stream of their own, take references and event
sequence numbers from ranges of their own, and only read the background's cards (never their
cool-down), so background traffic and incidents are the same events with or without them; they
add their own lines, which moves the line positions of later redeliveries and malformed lines.
Compromised terminals draw from a stream of their own and only label events as they leave the
queue (`Anomalies.label_terminals`): they change no line, and the behaviour anomalies' events
and labels are the same with or without them.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import accumulate, pairwise
from typing import NamedTuple

from monitor.simulation.lines import (
    AUTH_APPROVED,
    AUTH_REQUEST,
    DEBIT_POSTED,
    NO_RC,
    RC_APPROVED,
    EventQueue,
    Ids,
    Kind,
    Queued,
    TimeFormat,
)
from monitor.simulation.stage import Label
from monitor.simulation.world import (
    BACKGROUND_AMOUNT_CAP,
    US_PER_H,
    US_PER_MIN,
    US_PER_S,
    Merchant,
    Terminal,
    World,
    diurnal,
    new_token,
)

COMPROMISED = "compromised_card"
SPREE = "distant_spree"
NIGHT = "night_velocity"
TERMINAL = "compromised_terminal"
EPISODES = (COMPROMISED, SPREE, NIGHT)  # the behaviour anomalies: attempts of their own
KINDS = (*EPISODES, TERMINAL)

ATTEMPT_SHARE = 1 / 1000  # behaviour-anomalous attempts per background purchase, all together
MIN_AMOUNT = 1_000  # minor units: twice small_amount_burst's max_amount_minor
KNOWN_AFTER_US = 7 * 24 * US_PER_H  # analysts learn of an anomaly a week later
NIGHT_STARTS_US = (0, 4 * US_PER_H + 40 * US_PER_MIN)  # UTC time of day a night episode starts
#: Attempts per episode (low, high), drawn uniformly.
SIZES = {COMPROMISED: (3, 5), SPREE: (5, 9), NIGHT: (3, 6)}
#: Profiles whose goods resell well: where a compromised card's new terminals are.
RESALE = frozenset({"electronics", "jewelry", "clothing", "department_store"})
TRACKED_CARDS = 2_000  # about how many background cards' histories are kept
_MOST_PER_EUR_CENT = 1.6  # JPY, the currency with the most minor units per euro cent
_SEQ_BASE = 1 << 45  # event sequence numbers and references of anomalies: below the malformed
_REF_BASE = 1 << 45  # lines' (1 << 46), far above anything background and scenes mint
_US_PER_DAY = 24 * US_PER_H
_TAIL_US = 3 * US_PER_S  # the closing sale pins the last event 3 s before the end
TERMINALS_PER_DAY = 0.5  # new compromised terminals per day of simulated time
COMPROMISED_FOR_US = 14 * _US_PER_DAY  # every auth_request at the terminal this long is labelled


class Compromise(NamedTuple):
    """Every `auth_request` at `terminal` with an event time in [start_us, end_us) is fraud."""

    start_us: int
    end_us: int
    terminal: Terminal


def steady_terminals(world: World) -> list[Terminal]:
    """Where terminals are compromised: the background terminals of the world's quietest size
    (steady, about 100 `auth_request`s a day in the default world) of merchants without
    pre-authorisations; failing those, any background terminal."""
    plain = [t for t in world.terminals if not t.merchant.profile.preauth]
    if not plain:
        return list(world.terminals)
    quietest = min(t.rate_per_h for t in plain)
    return [t for t in plain if t.rate_per_h == quietest]


def compromise_plan(
    seed: int, world: World, start_us: int, end_us: int, per_day: float
) -> list[Compromise]:
    """The period's compromised terminals, by start time: `per_day` times its days, rounded at
    random, spread evenly (one start in each equal slice of the period), each a different
    steady terminal (fewer when the world has fewer)."""
    # Seeded simulated traffic, reproducible on purpose (not a secret).
    rng = random.Random(f"posmon-sim:{seed}:compromised_terminals")  # nosec B311
    period = end_us - start_us
    expected = max(per_day, 0.0) * period / _US_PER_DAY
    n = int(expected) + (rng.random() < expected - int(expected))
    free = steady_terminals(world)
    plan: list[Compromise] = []
    for j in range(min(n, len(free))):
        t0 = start_us + int((j + rng.random()) / n * period)
        term = free.pop(int(rng.random() * len(free)))
        plan.append(Compromise(t0, t0 + COMPROMISED_FOR_US, term))
    return plan


@dataclass(slots=True, eq=False)
class Customer:
    """What a background card has paid so far: how often, how much (in euro cents, so that
    currencies compare), at which terminals."""

    card_id: str
    purchases: int = 0
    eur_cents: float = 0.0  # the sum of its tickets
    terminals: list[Terminal] = field(default_factory=list)  # distinct, in order of first use
    currency: str = ""  # of its latest purchase

    @property
    def usual_eur_cents(self) -> float:
        """Its mean ticket in euro cents."""
        return self.eur_cents / self.purchases


class History:
    """The approved background purchases of one card in `every`, as `Background` reports them:
    enough candidates for the few episodes of a run, at a bounded cost in memory."""

    __slots__ = ("cards", "every", "known", "regulars")

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.cards: dict[int, Customer] = {}
        self.known: list[int] = []  # cards that have paid once or more, in order of first payment
        self.regulars: list[int] = []  # cards that have paid twice or more, in that order

    def paid(self, idx: int, card_id: str, term: Terminal, amount_minor: int) -> None:
        """Card `idx` paid `amount_minor` at `term` (in the terminal's currency)."""
        if idx % self.every:
            return
        customer = self.cards.get(idx)
        if customer is None:
            customer = self.cards[idx] = Customer(card_id)
            self.known.append(idx)
        merchant = term.merchant
        customer.purchases += 1
        customer.eur_cents += amount_minor / merchant.currency.per_eur_cent
        if term not in customer.terminals:
            customer.terminals.append(term)
        customer.currency = merchant.currency.code
        if customer.purchases == 2:
            self.regulars.append(idx)


def _price(merchant: Merchant, eur_cents: float) -> int:
    """A ticket in the merchant's minor units, at least `MIN_AMOUNT`, at most the cap."""
    return max(merchant.to_minor(eur_cents), MIN_AMOUNT)


class Anomalies:
    """Plans the period's anomaly episodes and plays each in the minute it starts."""

    def __init__(
        self,
        world: World,
        queue: EventQueue,
        seed: int,
        rng: random.Random,
        labels: list[Label],
        *,
        start_us: int,
        end_us: int,
        pool_size: int,
        terminals_per_day: float = TERMINALS_PER_DAY,
    ) -> None:
        self.world = world
        self.queue = queue
        self.rng = rng
        self.labels = labels
        self.history = History(max(1, pool_size // TRACKED_CARDS))
        self._ids = Ids(seed, first_ref=_REF_BASE)
        self._seq = _SEQ_BASE
        self._fmt = TimeFormat()
        self._last_us = end_us - _TAIL_US  # no anomalous event at or after this
        self._used: set[int] = set()  # background cards an episode has taken
        self._resale = [t for t in world.terminals if t.merchant.profile.name in RESALE]
        self._plan = self._place(start_us, end_us)
        self._next = 0
        self._waiting: list[str] = []  # episodes that found no card yet
        self.compromises = compromise_plan(seed, world, start_us, end_us, terminals_per_day)

    # -- planning ---------------------------------------------------------------------------

    def _place(self, start_us: int, end_us: int) -> list[tuple[int, str]]:
        """Start times of every episode of the period, sorted: per kind, the expected number
        rounded at random, each at a stratified quantile of the kind's intensity."""
        bounds = [start_us]
        minute = (start_us // US_PER_MIN + 1) * US_PER_MIN
        while minute < end_us:
            bounds.append(minute)
            minute += US_PER_MIN
        bounds.append(end_us)
        peak = self.world.peak_rate_per_h / US_PER_H  # purchases per microsecond at the peak
        spans = [(lo, hi - lo) for lo, hi in pairwise(bounds)]
        purchases = [peak * diurnal(lo) * span for lo, span in spans]
        day = sum(peak * diurnal(m * US_PER_MIN) * US_PER_MIN for m in range(24 * 60))
        night_lo, night_hi = NIGHT_STARTS_US
        night_rate = day / (night_hi - night_lo)  # a day's purchases, spread over the night
        night = [night_rate * span if night_lo <= lo % _US_PER_DAY < night_hi else 0.0
                 for lo, span in spans]  # fmt: skip
        plan: list[tuple[int, str]] = []
        for kind, weight in ((COMPROMISED, purchases), (SPREE, purchases), (NIGHT, night)):
            low, high = SIZES[kind]
            per_episode = ATTEMPT_SHARE / len(EPISODES) / ((low + high) / 2)
            cum = list(accumulate(w * per_episode for w in weight))
            expected = cum[-1] if cum else 0.0
            n = int(expected) + (self.rng.random() < expected - int(expected))
            for j in range(n):
                q = (j + self.rng.random()) / n * expected
                i = min(bisect_left(cum, q), len(cum) - 1)
                lo, span = spans[i]
                w = cum[i] - (cum[i - 1] if i else 0.0)
                frac = (q - (cum[i] - w)) / w if w > 0 else 0.0
                plan.append((lo + int(min(max(frac, 0.0), 1.0) * (span - 1)), kind))
        plan.sort()
        return plan

    # -- playing ----------------------------------------------------------------------------

    def at_minute(self, minute_us: int, next_us: int) -> None:
        """Play the episodes starting in [minute_us, next_us), and those still waiting for a
        card. Called before the background's purchases of the minute, so a card's history is
        what it paid before."""
        due = self._waiting
        self._waiting = []
        starts = [minute_us + int(self.rng.random() * (next_us - minute_us)) for _ in due]
        plan = self._plan
        while self._next < len(plan) and plan[self._next][0] < next_us:
            t0, kind = plan[self._next]
            self._next += 1
            due.append(kind)
            starts.append(max(t0, minute_us))
        for t0, kind in zip(starts, due, strict=True):
            play = {COMPROMISED: self._compromised, SPREE: self._spree, NIGHT: self._night}[kind]
            if not play(t0):
                self._waiting.append(kind)

    def _compromised(self, t0: int) -> bool:
        """4-10 times the card's usual ticket, a few times over some hours."""
        rng = self.rng
        most = BACKGROUND_AMOUNT_CAP / (10 * _MOST_PER_EUR_CENT)  # 10 times fits in any currency
        idx = self._card(lambda c: MIN_AMOUNT / 4 <= c.usual_eur_cents <= most)
        if idx is None:
            return False
        customer = self.history.cards[idx]
        own = [t for t in self._resale if t.merchant.currency.code == customer.currency]
        t = t0
        for _ in range(rng.randint(*SIZES[COMPROMISED])):
            new = bool(own) and rng.random() < 0.5
            term = rng.choice(own) if new else rng.choice(customer.terminals)
            eur_cents = customer.usual_eur_cents * rng.uniform(4.0, 10.0)
            self._purchase(t, term, customer.card_id, _price(term.merchant, eur_cents), COMPROMISED)
            t += 20 * US_PER_MIN + int(rng.random() * 70 * US_PER_MIN)
        return True

    def _spree(self, t0: int) -> bool:
        """Many terminals of merchants the card never used, abroad first, within an hour."""
        rng = self.rng
        idx = self._card(lambda c: True)
        if idx is None:
            return False
        customer = self.history.cards[idx]
        used = {t.merchant.index for t in customer.terminals}
        fresh = [t for t in self.world.terminals if t.merchant.index not in used]
        abroad = [t for t in fresh if t.merchant.currency.code != customer.currency]
        home = [t for t in fresh if t.merchant.currency.code == customer.currency]
        rng.shuffle(abroad)
        rng.shuffle(home)
        terms = (abroad + home)[: rng.randint(*SIZES[SPREE])]
        if not terms:
            return True  # a world this small has nowhere new to go
        span = 40 * US_PER_MIN + int(rng.random() * 30 * US_PER_MIN)
        inner = sorted(int(rng.random() * span) for _ in range(len(terms) - 2))
        offsets = [0, *inner, span][: len(terms)]
        for offset, term in zip(offsets, terms, strict=True):
            merchant = term.merchant
            eur_cents = merchant.profile.median_eur_cents * rng.uniform(1.0, 3.0)
            self._purchase(t0 + offset, term, customer.card_id, _price(merchant, eur_cents), SPREE)
        return True

    def _night(self, t0: int) -> bool:
        """Several attempts minutes apart at different terminals, in the small hours."""
        rng = self.rng
        idx = self._card(lambda c: True)
        card = new_token(rng) if idx is None else self.history.cards[idx].card_id
        n = min(rng.randint(*SIZES[NIGHT]), len(self.world.terminals))
        t = t0
        for term in rng.sample(self.world.terminals, n):
            merchant = term.merchant
            amount = max(merchant.draw_amount(rng), MIN_AMOUNT)
            self._purchase(t, term, card, amount, NIGHT)
            t += 30 * US_PER_S + int(rng.random() * 150 * US_PER_S)
        return True

    def _card(self, accept: Callable[[Customer], bool]) -> int | None:
        """A background card with history that no episode has taken and `accept` likes: a
        regular (two purchases or more) when one is found in a few draws, else any."""
        rng = self.rng
        cards = self.history.cards
        for pool in (self.history.regulars, self.history.known):
            if not pool:
                continue
            for _ in range(32):
                idx = pool[int(rng.random() * len(pool))]
                if idx not in self._used and accept(cards[idx]):
                    self._used.add(idx)
                    return idx
        return None

    # -- compromised terminals ----------------------------------------------------------------

    def label_terminals(self, items: Iterator[Queued]) -> Iterator[Queued]:
        """Pass the queue's events through unchanged, labelling every `auth_request` at a
        compromised terminal during its compromise, except the behaviour anomalies' own (they
        keep their kind)."""
        windows = {c.terminal: c for c in self.compromises}
        if not windows:
            yield from items
            return
        labels = self.labels
        event_id = self._ids.event_id
        fmt = self._fmt
        for item in items:
            if item.kind == AUTH_REQUEST and item.seq < _SEQ_BASE:
                window = windows.get(item.terminal)
                if window is not None and window.start_us <= item.time_us < window.end_us:
                    labels.append(
                        {
                            "type": "anomaly",
                            "event_id": event_id(item.seq),
                            "label": 1,
                            "kind": TERMINAL,
                            "known_at": fmt(item.time_us + KNOWN_AFTER_US),
                        }
                    )
            yield item

    # -- events -----------------------------------------------------------------------------

    def _purchase(self, t: int, term: Terminal, card: str, amount: int, kind: str) -> None:
        """An ordinary approved purchase, debited once; its request is labelled `kind`."""
        rng = self.rng
        ref = self._ids.ref()
        seq = self._add(t, AUTH_REQUEST, term, card, ref, amount)
        if seq is None:
            return
        self.labels.append(
            {
                "type": "anomaly",
                "event_id": self._ids.event_id(seq),
                "label": 1,
                "kind": kind,
                "known_at": self._fmt(t + KNOWN_AFTER_US),
            }
        )
        ok = t + 300_000 + int(rng.random() * 2_700_000)
        self._add(ok, AUTH_APPROVED, term, card, ref, amount, RC_APPROVED)
        if rng.random() < 0.55:  # posted online
            debit = ok + 2 * US_PER_S + int(rng.random() * 10 * US_PER_MIN)
        else:  # posted with the clearing batch
            debit = ok + 10 * US_PER_MIN + int(rng.random() * 140 * US_PER_MIN)
        self._add(debit, DEBIT_POSTED, term, card, ref, amount)

    def _add(  # noqa: PLR0917 - the event's fields, in the order of EventQueue.add
        self,
        t: int,
        kind: Kind,
        term: Terminal,
        card: str,
        ref: str,
        amount: int,
        rc: str = NO_RC,
    ) -> int | None:
        """Queue an event under the next anomaly sequence number; None when it falls in the
        period's last 3 s or after."""
        if t >= self._last_us:
            return None
        seq = self._seq
        self._seq = seq + 1
        self.queue.add_numbered(seq, t, kind, term, card, ref, amount, rc)
        return seq
