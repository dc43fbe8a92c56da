"""The hand-off between the two stages of the partitioned design (docs/streaming.md, "Scale-out").

The merchant stage (`Handoff`) forwards each accepted event a card-level rule takes to the
internal cards topic, on the partition of its card (`card_partition`), and after every batch
that moved its clock a marker to every partition of that topic: the newest event time of each
events partition it holds, and which of them are idle. Both go out in the batch's publish,
before its offsets are committed, and in that order, so on any partition of the cards topic a
marker comes after every event forwarded before it.

The card stage (`Markers`) reads both. Per partition of the cards topic it keeps, for each
events partition, the newest frontier a marker announced; the frontier it follows is the
smallest of those over the cards partitions it holds: every event forwarded before it has been
read on each of them. An events partition none of those has heard of yet holds the watermark,
as in one monitor; one every marker calls idle is left out; with all idle the watermark moves
to the newest frontier (`Scorer.follow`).

Records (the value's first byte says which): `B` followed by a batch of events, each as a 4-byte
big-endian length and the event exactly as it was read (it passed the card-number guard), up to
`MAX_RECORD_BYTES` a record; `M` followed by a marker,
`{"sources": 12, "frontiers": {"3": 1714000000000000}, "idle": [5]}`. Both are unkeyed, on the
partition they name. Events go in batches because kafka-python spends tens of microseconds on
each record it sends or reads: forwarded one record each, the two stages on one core ran at 0.32
of the single scorer with the model (which forwards 65 % of the events); batched, they do not
pay that per event.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Collection, Container, Iterator, Mapping, Sequence
from typing import Final

from monitor.core.events import Event

EVENTS: Final = b"B"
MARKER: Final = b"M"
# A batch record's bound: far below a Kafka record's usual limit (1 MiB) whatever the events.
MAX_RECORD_BYTES: Final = 256 * 1024

# A record for the cards topic: its partition, key and value.
Record = tuple[int, bytes | None, bytes]
Bands = Mapping[str, Sequence[tuple[int, float]]]


def card_partition(card_id: str, partitions: int) -> int:
    """The cards topic's partition of a card: crc32 of its id (posmon is the topic's only
    producer, so it picks partitions itself, in C, not by kafka-python's pure-Python murmur2)."""
    return zlib.crc32(card_id.encode()) % partitions


class Handoff:
    """The merchant stage's side: the records of one batch for the cards topic.

    `wanted`: the card stage's `Scorer.wanted()` (per kind, the bands of amounts it takes);
    `partitions`: the cards topic's; `sources`: the events topic's (markers carry it, so the
    card stage knows how many partitions must speak).
    """

    def __init__(self, wanted: Bands, partitions: int, sources: int) -> None:
        self.partitions = partitions
        self.sources = sources
        self._bands = {kind: tuple(bands) for kind, bands in wanted.items()}
        self._events: dict[int, list[bytes]] = {}  # cards partition -> framed events
        self._markers: list[Record] = []
        self._announced: tuple[tuple[tuple[int, int], ...], tuple[int, ...], int] | None = None
        self.forwarded = 0  # events handed on, running totals for the metrics
        self.markers = 0
        self.records = 0  # records of the cards topic (batches of events and markers)

    def wants(self, ev: Event) -> bool:
        bands = self._bands.get(ev.kind)
        return bands is not None and any(low <= ev.amount_minor <= high for low, high in bands)

    def forward(
        self, events: Sequence[Event], raws: Sequence[bytes | None], skip: Container[int]
    ) -> None:
        """Forward the wanted ones of a chunk's accepted `events` (`raws[i]`: what `events[i]` was
        decoded from; None: handed on before, read again in a rebuild); `skip` holds the indexes
        the scorer refused."""
        pending, bands, partitions = self._events, self._bands, self.partitions
        for i, ev in enumerate(events):
            wanted = bands.get(ev.kind)
            raw = raws[i]
            if wanted is None or raw is None or i in skip:
                continue
            if any(low <= ev.amount_minor <= high for low, high in wanted):
                c = zlib.crc32(ev.card_id.encode()) % partitions
                frames = pending.get(c)
                if frames is None:
                    frames = pending[c] = []
                frames.append(len(raw).to_bytes(4, "big"))
                frames.append(raw)
                self.forwarded += 1

    def mark(self, frontiers: Mapping[int, int], idle: Collection[int]) -> None:
        """After a batch: a marker to every partition of the cards topic, if the frontiers or the
        idle partitions changed since the last one; none while the events topic's partition
        count is not known (`sources` 0): a card stage must know every partition that is to
        speak."""
        if self.sources < 1:
            return
        sources = max((self.sources, *(p + 1 for p in (*frontiers, *idle))))
        now = (tuple(sorted(frontiers.items())), tuple(sorted(idle)), sources)
        if now == self._announced:
            return
        self._announced = now
        value = (
            MARKER
            + json.dumps(
                {
                    "sources": sources,
                    "frontiers": {str(p): t for p, t in now[0]},
                    "idle": list(now[1]),
                },
                separators=(",", ":"),
            ).encode()
        )
        self._markers.extend((c, None, value) for c in range(self.partitions))
        self.markers += self.partitions

    def restart(self) -> None:
        """A new state (a new assignment): announce its frontiers, even if they look the same."""
        self._announced = None
        self._events, self._markers = {}, []

    def take(self) -> list[Record]:
        """The records since the last call: what the batch's publish hands on, the events before
        the markers."""
        records: list[Record] = []
        for c, frames in sorted(self._events.items()):
            records.extend((c, None, value) for value in _batches(frames))
        records.extend(self._markers)
        self._events, self._markers = {}, []
        self.records += len(records)
        return records


def _batches(frames: list[bytes]) -> Iterator[bytes]:
    """`EVENTS` records of the framed events (length, event, length, event, ...), each at most
    `MAX_RECORD_BYTES` unless one event alone is larger."""
    start, size = 0, 1
    for end in range(0, len(frames), 2):
        grown = size + 4 + len(frames[end + 1])
        if grown > MAX_RECORD_BYTES and end > start:
            yield EVENTS + b"".join(frames[start:end])
            start, grown = end, 1 + 4 + len(frames[end + 1])
        size = grown
    if start < len(frames):
        yield EVENTS + b"".join(frames[start:])


def unframe(value: bytes) -> list[bytes] | None:
    """The events of a batch record (`value` without its `B`); None when it is not one."""
    events, at, end = [], 0, len(value)
    while at < end:
        if at + 4 > end:
            return None
        length = int.from_bytes(value[at : at + 4], "big")
        at += 4
        if at + length > end:
            return None
        events.append(value[at : at + length])
        at += length
    return events


class MarkerError(ValueError):
    """A record of the cards topic that is not a valid marker."""


class Markers:
    """The card stage's side: the newest marker read on each partition of the cards topic."""

    def __init__(self) -> None:
        # cards partition -> (events partition -> newest frontier), which of those the latest
        # marker naming them called idle, how many partitions the events topic has
        self.frontiers: dict[int, dict[int, int]] = {}
        self.idle: dict[int, set[int]] = {}
        self.sources: dict[int, int] = {}
        self.read = 0  # markers read, a running total for the metrics

    def take(self, partition: int, value: bytes) -> None:
        """A marker read on `partition` of the cards topic (`value` without its `M`)."""
        try:
            marker = json.loads(value)
            sources = int(marker["sources"])
            frontiers = {int(p): int(t) for p, t in marker["frontiers"].items()}
            idle = frozenset(int(p) for p in marker["idle"])
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            raise MarkerError(f"not a marker: {type(exc).__name__}") from None
        if sources < 1 or any(not 0 <= p < sources for p in (*frontiers, *idle)):
            raise MarkerError("not a marker: a partition outside the events topic")
        known = self.frontiers.setdefault(partition, {})
        for p, t in frontiers.items():
            if t > known.get(p, t - 1):
                known[p] = t
        # Each merchant member's markers name only the partitions it holds.
        quiet = self.idle.setdefault(partition, set())
        quiet.difference_update(frontiers)
        quiet.update(idle)
        self.sources[partition] = max(sources, self.sources.get(partition, 0))
        self.read += 1

    def clock(self, held: Collection[int] | None) -> tuple[dict[int, int], set[int] | None]:
        """What `Scorer.follow` takes: each events partition's frontier (the smallest over the
        `held` cards partitions; None: every one with a marker) and the active ones. Until a
        held partition has given a marker, nothing moves: ({}, None)."""
        over = list(self.frontiers) if held is None else list(held)
        if not over or any(c not in self.frontiers for c in over):
            return {}, None
        sources = max(self.sources[c] for c in over)
        frontiers: dict[int, int] = {}
        active: set[int] = set()
        for p in range(sources):
            times = [self.frontiers[c].get(p) for c in over]
            if all(t is not None for t in times):
                frontiers[p] = min(t for t in times if t is not None)
            if not all(p in self.idle[c] for c in over):
                active.add(p)
        return frontiers, active
