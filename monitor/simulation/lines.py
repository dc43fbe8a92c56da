"""Identifiers, timestamps, the JSON line of an event, and the queue that orders lines by arrival.

Lines are built with string formatting, not `json.dumps`: every value written here is an ASCII
identifier, a fixed enum string or an integer, so no escaping is ever needed, and formatting is
several times faster. Events wait in the queue as small tuples and are rendered when they leave.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import NamedTuple

from monitor.simulation.world import US_PER_MIN, US_PER_S, Terminal

_M48 = (1 << 48) - 1


def seed_salt(seed: int, purpose: str) -> int:
    """A 64-bit number derived from the seed and a purpose, stable across runs and platforms."""
    digest = hashlib.sha256(f"posmon-sim:{seed}:{purpose}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _mix48(x: int) -> int:
    """A bijection on 48-bit integers (xor-shifts and odd multipliers modulo 2**48)."""
    x = ((x ^ (x >> 23)) * 0xD6E8FEB86659) & _M48
    x = ((x ^ (x >> 21)) * 0x9E3779B97F4B) & _M48
    return x ^ (x >> 24)


class Ids:
    """Mints globally unique event ids and transaction references from the seed and a counter.

    Event ids are `evt_` + 12 hex digits, references 12 upper-case hex digits like an RRN; both
    are 48-bit bijections of their counter, so they never collide. Neither can hold more than
    12 digits in a row, so neither can ever look like a PAN (13-19 digits, even with spaces or
    dashes). Two minters of one seed with counters in disjoint ranges never collide.
    """

    __slots__ = ("_event_salt", "_ref_n", "_ref_salt")

    def __init__(self, seed: int, first_ref: int = 0) -> None:
        self._event_salt = seed_salt(seed, "event") & _M48
        self._ref_salt = seed_salt(seed, "ref") & _M48
        self._ref_n = first_ref

    def event_id(self, seq: int) -> str:
        """The event id of the `seq`-th event created."""
        return f"evt_{_mix48((seq + self._event_salt) & _M48):012x}"

    def ref(self) -> str:
        """A fresh transaction reference."""
        n = self._ref_n
        self._ref_n = n + 1
        return f"{_mix48((n + self._ref_salt) & _M48):012X}"


class TimeFormat:
    """RFC 3339 in UTC with microseconds (`2026-11-02T08:15:04.123456+00:00`); the minute prefix
    is cached because formatting a datetime per event would dominate the run time."""

    __slots__ = ("_cache",)

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, time_us: int) -> str:
        minute, rem = divmod(time_us, US_PER_MIN)
        prefix = self._cache.get(minute)
        if prefix is None:
            moment = datetime.fromtimestamp(minute * 60, UTC)
            prefix = self._cache[minute] = moment.strftime("%Y-%m-%dT%H:%M:")
        sec, frac = divmod(rem, US_PER_S)
        return f"{prefix}{sec:02d}.{frac:06d}+00:00"


class Kind(NamedTuple):
    """An event kind with its source, as pre-rendered JSON fragments."""

    name: str
    head: str  # '"kind":"auth_request"'
    tail: str  # ',"source":"terminal"'


def _kind(name: str, source: str) -> Kind:
    return Kind(name, f'"kind":"{name}"', f',"source":"{source}"')


AUTH_REQUEST = _kind("auth_request", "terminal")
AUTH_APPROVED = _kind("auth_approved", "terminal")
AUTH_DECLINED = _kind("auth_declined", "terminal")
NETWORK_ERROR = _kind("network_error", "terminal")
REVERSAL = _kind("reversal", "terminal")
DEBIT_POSTED = _kind("debit_posted", "ledger")
REFUND = _kind("refund", "ledger")
PREAUTH_HOLD = _kind("preauth_hold", "acquirer")
PREAUTH_RELEASE = _kind("preauth_release", "acquirer")
PREAUTH_COMPLETION = _kind("preauth_completion", "acquirer")


def response_code(code: str) -> str:
    """The `response_code` fragment, inserted between `currency` and `mcc`."""
    return f',"response_code":"{code}"'


RC_APPROVED = response_code("00")
NO_RC = ""


class Queued(NamedTuple):
    """An event waiting for its turn: sorted by (arrival, seq); seq is unique, so the sort
    never compares the rest."""

    arrival_us: int
    seq: int
    time_us: int
    kind: Kind
    terminal: Terminal
    card_id: str
    txn_ref: str
    amount_minor: int
    rc: str


class EventQueue:
    """Events filed by arrival time in one-minute buckets (a calendar queue).

    Producers add events in any order, as long as no event arrives before the producer's
    clock: `release(until_us)` then hands out, sorted by (arrival, seq), every event that
    arrives before `until_us`. Events at or after `end_us` (the end of the simulated period)
    are dropped, so the file covers exactly the period.
    """

    __slots__ = ("_buckets", "_next_bucket", "end_us", "seq")

    BUCKET_US = US_PER_MIN

    def __init__(self, start_us: int, end_us: int) -> None:
        self._buckets: dict[int, list[Queued]] = {}
        self._next_bucket = start_us // self.BUCKET_US
        self.end_us = end_us
        self.seq = 0

    def add(  # noqa: PLR0917 - the hot path: positional arguments are the cheapest call
        self,
        time_us: int,
        kind: Kind,
        terminal: Terminal,
        card_id: str,
        txn_ref: str,
        amount_minor: int,
        rc: str = NO_RC,
        delay_us: int = 0,
    ) -> bool:
        """Queue an event that happened at `time_us` and reaches the reader `delay_us` later;
        False (and nothing queued) when it falls outside the period."""
        if time_us >= self.end_us:
            return False
        seq = self.seq
        self.seq = seq + 1
        arrival = time_us + delay_us
        item = Queued(arrival, seq, time_us, kind, terminal, card_id, txn_ref, amount_minor, rc)
        key = arrival // self.BUCKET_US
        if key < self._next_bucket:
            raise AssertionError(f"event arrives at {arrival} after its bucket was released")
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [item]
        else:
            bucket.append(item)
        return True

    def add_numbered(  # noqa: PLR0917 - the event's fields, in the order of `add`
        self,
        seq: int,
        time_us: int,
        kind: Kind,
        terminal: Terminal,
        card_id: str,
        txn_ref: str,
        amount_minor: int,
        rc: str = NO_RC,
    ) -> bool:
        """`add` with a sequence number of the caller's (its event id is `Ids.event_id(seq)`),
        taken from a range no other producer uses, so it shifts no other event's id; it
        arrives at `time_us`. False (and nothing queued) when it falls outside the period."""
        if time_us >= self.end_us:
            return False
        key = time_us // self.BUCKET_US
        if key < self._next_bucket:
            raise AssertionError(f"event arrives at {time_us} after its bucket was released")
        item = Queued(time_us, seq, time_us, kind, terminal, card_id, txn_ref, amount_minor, rc)
        self._buckets.setdefault(key, []).append(item)
        return True

    def release(self, until_us: int) -> Iterator[Queued]:
        """Every queued event whose bucket lies wholly before `until_us`, in arrival order."""
        last = until_us // self.BUCKET_US  # buckets < last end at or before until_us
        buckets = self._buckets
        while self._next_bucket < last:
            bucket = buckets.pop(self._next_bucket, None)
            self._next_bucket += 1
            if bucket:
                bucket.sort()
                yield from bucket

    def drain(self) -> Iterator[Queued]:
        """Every event still queued, in arrival order (at the end of the period)."""
        for key in sorted(self._buckets):
            bucket = self._buckets.pop(key)
            bucket.sort()
            yield from bucket


def render(item: Queued, event_id: str, timestamp: str) -> str:
    """The JSON line of a queued event, fields in the contract's order."""
    kind = item.kind
    term = item.terminal
    return (
        f'{{"event_id":"{event_id}","event_time":"{timestamp}",{kind.head},{term.ids},'
        f'"card_id":"{item.card_id}","txn_ref":"{item.txn_ref}",'
        f'"amount_minor":{item.amount_minor},{term.cur}{item.rc},{term.mcc}{kind.tail}}}'
    )
