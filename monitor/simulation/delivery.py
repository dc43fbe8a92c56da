"""The order a reader sees: rendered lines, redeliveries, malformed lines and late labels.

Lateness is decided here, on the final order, exactly as `docs/detectors.md` defines it: a
line is late when its `event_time` is below the largest `event_time` of the valid, first-seen
lines before it minus `allowed_lateness`. Redeliveries (same `event_id`) are dropped before that
test, so they are never late; malformed lines carry the newest `event_time` seen (or none),
so they move nothing.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple

from monitor.simulation.lines import Ids, Queued, TimeFormat, render
from monitor.simulation.malformed import VARIANTS, MalformedLines
from monitor.simulation.stage import Label

REDELIVERY_RATE = 0.002
#: A copy comes 3-300 lines after its original, but never more than this much newer event
#: time later: brokers redeliver after seconds or minutes, and a monitor remembers event ids
#: for a bounded horizon of event time (posmon: an hour).
REDELIVERY_MAX_LAG_US = 5 * 60 * 1_000_000
MALFORMED_RATE = 0.0005


class _Copy(NamedTuple):
    """A line to deliver again at `due_line`, or before any event newer than `latest_us`."""

    due_line: int
    latest_us: int
    line: bytes
    event_id: str


@dataclass(slots=True)
class Tally:
    """What a run wrote, by kind of line."""

    lines: int = 0
    events: int = 0  # valid lines, first delivery
    redeliveries: int = 0
    malformed: int = 0
    late: int = 0
    malformed_variants: dict[str, int] = field(default_factory=dict)


class Delivery:
    """Renders queued events and interleaves the faults a real feed has (when `faults`)."""

    def __init__(
        self,
        ids: Ids,
        rng: random.Random,
        malformed: MalformedLines | None,
        labels: list[Label],
        *,
        lateness_us: int,
        start_us: int,
    ) -> None:
        self._ids = ids
        self._rng = rng
        self._malformed = malformed
        self._labels = labels
        self._lateness_us = lateness_us
        self._start_us = start_us
        self._fmt = TimeFormat()
        self.tally = Tally()

    def lines(self, items: Iterator[Queued]) -> Iterator[bytes]:
        """Every line of the file, in order, without line terminators."""
        faults = self._malformed is not None
        rng = self._rng
        labels = self._labels
        tally = self.tally
        event_id = self._ids.event_id
        fmt = self._fmt
        lateness = self._lateness_us
        newest = -(1 << 62)
        line_no = 0
        redeliver_at = self._gap(REDELIVERY_RATE)
        malformed_at = self._gap(MALFORMED_RATE)
        pending: list[_Copy] = []
        variants = self._variant_cycle()
        for item in items:
            t = item.time_us
            if pending and any(c.due_line <= line_no + 1 or t > c.latest_us for c in pending):
                due = [c for c in pending if c.due_line <= line_no + 1 or t > c.latest_us]
                pending = [c for c in pending if c not in due]
                for copy in self._copies(due):
                    line_no += 1
                    yield copy
            eid = event_id(item.seq)
            line = render(item, eid, fmt(t)).encode()
            line_no += 1
            if t < newest - lateness:
                tally.late += 1
                labels.append({"type": "late", "event_id": eid})
            elif t > newest:
                newest = t
            yield line
            if not faults:
                continue
            if line_no >= redeliver_at:
                due_line = line_no + rng.randint(3, 300)
                pending.append(_Copy(due_line, newest + REDELIVERY_MAX_LAG_US, line, eid))
                redeliver_at = line_no + self._gap(REDELIVERY_RATE)
            if line_no >= malformed_at:
                line_no += 1
                yield self._bad(next(variants), line_no, newest)
                malformed_at = line_no + self._gap(MALFORMED_RATE)
        for copy in self._copies(pending):
            line_no += 1
            yield copy
        if faults:
            for variant, _ in VARIANTS:
                if variant not in tally.malformed_variants:
                    line_no += 1
                    yield self._bad(variant, line_no, newest)
        tally.lines = line_no
        tally.events = line_no - tally.malformed - tally.redeliveries

    def _copies(self, due: list[_Copy]) -> list[bytes]:
        """The redelivered lines, labelled, in the order they were scheduled to come."""
        due = sorted(due, key=lambda c: c.due_line)
        self.tally.redeliveries += len(due)
        self._labels.extend({"type": "redelivery", "event_id": c.event_id} for c in due)
        return [c.line for c in due]

    def _bad(self, variant: str, line_no: int, newest: int) -> bytes:
        assert self._malformed is not None
        reason = dict(VARIANTS)[variant]
        self._labels.append(
            {"type": "malformed", "line": line_no, "reason": reason, "variant": variant}
        )
        self.tally.malformed += 1
        self.tally.malformed_variants[variant] = self.tally.malformed_variants.get(variant, 0) + 1
        return self._malformed.make(variant, max(newest, self._start_us))

    def _gap(self, rate: float) -> int:
        return 1 + int(self._rng.expovariate(rate))

    def _variant_cycle(self) -> Iterator[str]:
        names = [v for v, _ in VARIANTS]
        while True:
            self._rng.shuffle(names)
            yield from names
