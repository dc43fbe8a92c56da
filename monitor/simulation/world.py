"""The simulated world: merchants, terminals, currencies, cards and the rhythm of the day.

Everything here is built once from a seeded `random.Random`, so a seed always yields the same
world. Amounts are integer minor units; times are integer microseconds since the epoch (UTC).
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field

US_PER_S = 1_000_000
US_PER_MIN = 60 * US_PER_S
US_PER_H = 60 * US_PER_MIN

#: Background amounts stay below this, far from the `large_amount` default (1,000,000).
BACKGROUND_AMOUNT_CAP = 900_000

# Hourly rate multipliers (UTC hour of the event time), interpolated linearly: quiet nights, a
# morning ramp, a lunch peak and an early-evening peak.
_DIURNAL = (
    0.04, 0.03, 0.02, 0.02, 0.03, 0.06, 0.15, 0.35, 0.55, 0.70, 0.80, 0.90,
    1.00, 0.95, 0.75, 0.70, 0.80, 0.95, 1.00, 0.85, 0.60, 0.40, 0.20, 0.08, 0.04,
)  # fmt: skip


def diurnal(time_us: int) -> float:
    """Relative purchase rate at `time_us` (1.0 at the daily peak, never below 0.02)."""
    hour = (time_us % (24 * US_PER_H)) / US_PER_H
    low = int(hour)
    frac = hour - low
    return _DIURNAL[low] * (1.0 - frac) + _DIURNAL[low + 1] * frac


@dataclass(frozen=True, slots=True)
class Currency:
    """An ISO 4217 currency and how to turn a price in euro cents into its minor units."""

    code: str
    per_eur_cent: float  # minor units per euro cent
    step: int  # prices are multiples of this (10 yen; 1 cent elsewhere)


EUR = Currency("EUR", 1.0, 1)
USD = Currency("USD", 1.08, 1)
GBP = Currency("GBP", 0.85, 1)
JPY = Currency("JPY", 1.6, 10)  # exponent 0: 1 EUR is about 160 yen


@dataclass(frozen=True, slots=True)
class Profile:
    """A kind of merchant: its MCC, its typical ticket (euro cents, log-normal) and whether it
    places pre-authorisation holds (hotels, car rental)."""

    name: str
    mcc: str
    median_eur_cents: int
    sigma: float
    weight: float
    preauth: bool = False


PROFILES = (
    Profile("grocery", "5411", 3200, 0.8, 18),
    Profile("restaurant", "5812", 4200, 0.6, 10),
    Profile("cafe", "5814", 900, 0.5, 10),
    Profile("fuel", "5541", 5500, 0.5, 8),
    Profile("pharmacy", "5912", 1800, 0.7, 6),
    Profile("clothing", "5651", 6500, 0.8, 6),
    Profile("electronics", "5732", 18000, 1.0, 4),
    Profile("jewelry", "5944", 35000, 1.1, 1),
    Profile("department_store", "5311", 5000, 0.9, 4),
    Profile("taxi", "4121", 2200, 0.5, 4),
    Profile("misc_retail", "5999", 2500, 0.9, 6),
    Profile("hotel", "7011", 9000, 0.8, 2, preauth=True),
    Profile("car_rental", "7512", 15000, 0.6, 1, preauth=True),
)
_PROFILE_BY_NAME = {p.name: p for p in PROFILES}

# (share of merchants, terminals low..high, purchases per terminal per hour at the daily peak)
_SIZES = ((0.6, 1, 2, 8.0), (0.3, 2, 4, 16.0), (0.1, 5, 10, 30.0))


@dataclass(slots=True, eq=False)
class Terminal:
    """A POS terminal with the JSON fragments of its fixed fields pre-rendered (speed)."""

    index: int  # position in `World.terminals`; -1 for a dedicated terminal
    terminal_id: str
    merchant: Merchant
    rate_per_h: float  # background purchases per hour at the daily peak; 0 when dedicated
    ids: str = field(init=False)  # '"terminal_id":"T..","merchant_id":"M.."'
    cur: str = field(init=False)  # '"currency":"EUR"'
    mcc: str = field(init=False)  # '"mcc":"5411"'

    def __post_init__(self) -> None:
        self.ids = f'"terminal_id":"{self.terminal_id}","merchant_id":"{self.merchant.merchant_id}"'
        self.cur = f'"currency":"{self.merchant.currency.code}"'
        self.mcc = f'"mcc":"{self.merchant.profile.mcc}"'


@dataclass(slots=True, eq=False)
class Merchant:
    """A merchant: one currency, one MCC, background terminals and (later) dedicated ones."""

    index: int
    merchant_id: str
    profile: Profile
    currency: Currency
    card_base: int  # start of the slice of the card pool its regular customers come from
    terminals: list[Terminal] = field(default_factory=list)
    dedicated: int = 0  # terminals added for incidents, never used by background traffic

    def draw_amount(self, rng: random.Random) -> int:
        """A background ticket in minor units: log-normal around the profile's median, priced
        in steps of the currency, at least one step and below `BACKGROUND_AMOUNT_CAP`."""
        prof = self.profile
        cents = prof.median_eur_cents * math.exp(prof.sigma * rng.gauss(0.0, 1.0))
        return self.to_minor(cents)

    def to_minor(self, eur_cents: float) -> int:
        """Euro cents to this merchant's minor units, rounded to the currency's step, capped."""
        cur = self.currency
        minor = int(eur_cents * cur.per_eur_cent) // cur.step * cur.step
        return min(max(minor, cur.step * 10), BACKGROUND_AMOUNT_CAP)

    def add_dedicated_terminal(self, world: World) -> Terminal:
        """A new terminal of this merchant that background traffic never uses."""
        self.dedicated += 1
        number = len(self.terminals) + self.dedicated
        term = Terminal(-1, f"T{self.index:05d}-{number:02d}", self, 0.0)
        world.dedicated.append(term)
        return term


_TOKEN_DIGIT_RUN = re.compile(r"\d{12}")


def new_token(rng: random.Random) -> str:
    """A card token `tok_` + 20 hex digits, never holding 12 or more digits in a row, so no
    PAN scanner (13-19 digits) can ever mistake it for a card number."""
    while True:
        token = f"tok_{rng.getrandbits(80):020x}"
        if _TOKEN_DIGIT_RUN.search(token) is None:
            return token


@dataclass(slots=True, eq=False)
class World:
    """Merchants and their terminals, built from a seed."""

    merchants: list[Merchant]
    terminals: list[Terminal]  # background terminals, in index order
    dedicated: list[Terminal] = field(default_factory=list)

    @property
    def peak_rate_per_h(self) -> float:
        """Background purchases per hour over all terminals at the daily peak."""
        return sum(t.rate_per_h for t in self.terminals)


def build_world(rng: random.Random, merchants: int, cards: int) -> World:
    """Build `merchants` merchants of mixed profiles, sizes and currencies.

    The first merchants are pinned so that even a small world has every currency (EUR, USD,
    GBP, JPY) and both pre-authorising profiles (hotel, car rental).
    """
    pinned = [
        ("grocery", EUR), ("hotel", EUR), ("car_rental", EUR), ("cafe", USD),
        ("restaurant", GBP), ("electronics", JPY), ("department_store", EUR),
    ]  # fmt: skip
    weights = [p.weight for p in PROFILES]
    out: list[Merchant] = []
    terminals: list[Terminal] = []
    for i in range(merchants):
        if i < len(pinned):
            profile, currency = _PROFILE_BY_NAME[pinned[i][0]], pinned[i][1]
        else:
            profile = rng.choices(PROFILES, weights)[0]
            currency = rng.choices((EUR, USD, GBP, JPY), (80, 8, 7, 5))[0]
        merchant = Merchant(i, f"M{i:05d}", profile, currency, rng.randrange(max(cards, 1)))
        _, low, high, rate = rng.choices(_SIZES, [s[0] for s in _SIZES])[0]
        for n in range(rng.randint(low, high)):
            term = Terminal(len(terminals), f"T{i:05d}-{n + 1:02d}", merchant, rate)
            merchant.terminals.append(term)
            terminals.append(term)
        out.append(merchant)
    return World(out, terminals)


class CardPool:
    """Background cards with a cool-down: a card starts a purchase only when its previous one
    ended at least `cooldown_us` earlier.

    With at most two attempts per purchase (a failure and its retry) and a 10-minute
    cool-down, no background card can make 5 small attempts in 10 minutes
    (`small_amount_burst`). Regular customers of a merchant come from its slice of the pool,
    others from anywhere, so many cards shop at several merchants. Tokens are drawn when a card
    is first used, so a large pool costs little until it is used.
    """

    __slots__ = ("_rng", "_tokens", "cooldown_us", "next_free")

    LOCAL_SLICE = 400
    LOCAL_SHARE = 0.7

    def __init__(self, rng: random.Random, size: int, cooldown_us: int) -> None:
        self._rng = rng
        self.cooldown_us = cooldown_us
        self._tokens: list[str | None] = [None] * size
        self.next_free = [0] * size

    def pick(self, merchant: Merchant, time_us: int) -> int:
        """Index of a card free at `time_us` (a new card when a few draws find none free)."""
        rnd = self._rng.random
        n = len(self._tokens)
        for _ in range(8):
            if rnd() < self.LOCAL_SHARE:
                idx = (merchant.card_base + int(rnd() * self.LOCAL_SLICE)) % n
            else:
                idx = int(rnd() * n)
            if self.next_free[idx] <= time_us:
                return idx
        self._tokens.append(None)
        self.next_free.append(0)
        return n

    def token(self, idx: int) -> str:
        """The card id of card `idx`."""
        token = self._tokens[idx]
        if token is None:
            token = self._tokens[idx] = new_token(self._rng)
        return token

    def release(self, idx: int, last_attempt_us: int) -> None:
        """The card's purchase made its last attempt at `last_attempt_us`."""
        self.next_free[idx] = last_attempt_us + self.cooldown_us
