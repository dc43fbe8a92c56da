"""The scoring loop over an abstract `Source` and `Sink`, the same for replay and for the stream.

    poll a batch -> decode each message (rejects become dead letters) -> score (events the
    scorer refuses become dead letters) -> advance the watermark -> publish the batch's alerts
    and dead letters -> commit the batch

The sink returns only once it has durably handed the batch on (a file written, a broker's
acknowledgement), and only then is the batch committed: nothing is lost, and a redelivered batch
yields the same alert ids, so nothing is paged twice.

A dead letter carries the partition and offset of its message (`Batch.offsets`; a line number in
a replay) for the sink to name its source, and a `raw` cut to `raw_bytes` (docs/contract.md,
"Dead letters"): no single record can stop the loop.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Final, Protocol

from monitor.core.alerts import Alert, newest
from monitor.core.batches import Batch, Source
from monitor.core.events import Event, Rejection, decode, refusal
from monitor.scoring.handoff import EVENTS, MARKER, Handoff, MarkerError, Record, unframe
from monitor.scoring.scorer import Scorer

# The default bound of a dead letter's `raw` (bytes as a JSON string): a dead letter stays far
# below a Kafka message's usual limit (1 MiB) whatever the message held.
DEAD_LETTER_RAW_BYTES: Final = 64 * 1024


class Sink(Protocol):
    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[Record] = (),
    ) -> None:
        """Hand alerts, dead letters and records for the card stage (`handoff`) on durably;
        return only when that is done."""


@dataclass(slots=True)
class Stats:
    """What a run did, for the summary table and the metrics."""

    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # dead letters by reason
    truncated: int = 0  # dead letters whose `raw` was cut
    alerts_emitted: int = 0  # every version, updates included
    raised: Counter[str] = field(default_factory=Counter)  # new alerts by detector
    latest: dict[str, Alert] = field(default_factory=dict)  # detector -> its newest alert
    new_in_batch: list[Alert] = field(default_factory=list)  # new alerts of the last batch
    emitted_in_batch: list[Alert] = field(default_factory=list)  # every alert of the last batch
    invalid: int = 0  # records of the cards topic that are neither an event nor a marker


def score_batch(
    batch: Batch,
    scorer: Scorer,
    stats: Stats,
    raw_bytes: int = DEAD_LETTER_RAW_BYTES,
    handoff: Handoff | None = None,
) -> tuple[list[Alert], list[Rejection]]:
    """Decode and score one batch; returns the alerts it opened or grew and its dead letters
    (in message order within each chunk). A merchant stage's `handoff` gets the events the
    card stage takes (not those handed on before: `batch.handed_on`) and the batch's marker."""
    rejected: list[Rejection] = []
    offsets = batch.offsets or {}
    for partition, messages in batch.chunks:
        limit = _future_limit(batch, partition, scorer)
        # Decode the whole chunk, then score it in one call (not one call per event). Only the
        # rejects note their index: an event's index follows from theirs, when it is refused.
        events: list[Event] = []
        skipped: list[tuple[int, Rejection]] = []
        raws: list[bytes | None] = []  # a merchant stage's: what each event was decoded from
        new = _first_new(batch, partition) if handoff is not None else len(messages)
        for i, raw in enumerate(messages):
            decoded = decode(raw)
            if limit is not None and type(decoded) is Event and decoded.t > limit:
                decoded = _future(raw, decoded.t - limit, scorer)
            if type(decoded) is Event:
                events.append(decoded)
                if handoff is not None:
                    raws.append(raw if i >= new else None)
            else:
                assert isinstance(decoded, Rejection)
                skipped.append((len(events) + len(skipped), decoded))
        scorer.use_partition(partition, batch.active)
        refused = scorer.process_many(events)
        if handoff is not None:
            handoff.forward(events, raws, {k for k, _, _ in refused})
        stats.messages += len(messages)
        if not skipped and not refused:
            continue
        letters = list(skipped)
        for k, reason, error in refused:
            i = _message_index(k, skipped)
            letters.append((i, refusal(reason, error, messages[i])))
        letters.sort(key=_first)
        at = offsets.get(partition)  # None: the source gives no coordinates
        for i, letter in letters:
            located = letter if at is None else letter._replace(partition=partition, offset=at[i])
            rejected.append(_bounded(located, raw_bytes, stats))
    scorer.advance(batch.active)
    if handoff is not None:
        held, active = batch.held or (), batch.active
        handoff.mark(
            scorer.frontiers(), [] if active is None else [p for p in held if p not in active]
        )
    return _collect(scorer, stats), rejected


def score_cards(
    batch: Batch, scorer: Scorer, stats: Stats, raw_bytes: int = DEAD_LETTER_RAW_BYTES
) -> tuple[list[Alert], list[Rejection]]:
    """A card stage's batch of the cards topic (`monitor.scoring.handoff`): apply the forwarded
    events, take the markers, follow the merchant stages' clock. It writes no dead letter: the
    merchant stage wrote those of the events; a record that is neither an event nor a marker is
    counted (`stats.invalid`)."""
    markers = scorer.markers
    assert markers is not None, "a card stage's scorer"
    for partition, messages in batch.chunks:
        events: list[Event] = []
        for raw in messages:
            head = raw[:1]
            if head == EVENTS:
                framed = unframe(raw[1:])
                if framed is not None:
                    for line in framed:
                        decoded = decode(line)
                        if type(decoded) is Event:
                            events.append(decoded)
                        else:
                            stats.invalid += 1
                    continue
            elif head == MARKER:
                try:
                    markers.take(partition, raw[1:])
                    continue
                except MarkerError:
                    pass
            stats.invalid += 1
        scorer.process_many(events)  # a conflict is the merchant stage's dead letter
        stats.messages += len(messages)
    frontiers, active = markers.clock(batch.held)
    scorer.follow(frontiers, active)
    return _collect(scorer, stats), []


def _first_new(batch: Batch, partition: int) -> int:
    """The index in its chunk of the first message not handed on before (a rebuild reads the
    others again: their events were forwarded then)."""
    floor = (batch.handed_on or {}).get(partition)
    at = (batch.offsets or {}).get(partition)
    return 0 if floor is None or at is None else bisect_left(at, floor)


def _future_limit(batch: Batch, partition: int, scorer: Scorer) -> int | None:
    """The latest event time taken from a chunk while streaming: its newest broker append time
    plus `max_future_skew`. A replay has no broker clock, and no limit (None)."""
    if batch.append_ms is None or partition not in batch.append_ms:
        return None
    return batch.append_ms[partition] * 1000 + scorer.watermark.skew


def _future(raw: bytes, beyond_us: int, scorer: Scorer) -> Rejection:
    ahead = (beyond_us + scorer.watermark.skew) / 1e6
    return refusal("future", f"event_time is {ahead:.0f} s ahead of the broker's clock", raw)


def _message_index(k: int, skipped: list[tuple[int, Rejection]]) -> int:
    """The index in its chunk of the `k`-th event decoded from it, the rejects being `skipped`."""
    i = k
    for index, _ in skipped:  # ascending: each reject at or before the event shifts it by one
        if index > i:
            break
        i += 1
    return i


def _first(letter: tuple[int, Rejection]) -> int:
    return letter[0]


def _bounded(rejection: Rejection, raw_bytes: int, stats: Stats) -> Rejection:
    """Count the dead letter by reason, and cut its `raw` to `raw_bytes` (counted if it is)."""
    stats.rejected[rejection.reason] += 1
    cut = rejection.cut(raw_bytes)
    if cut is not rejection:
        stats.truncated += 1
    return cut


def _collect(scorer: Scorer, stats: Stats) -> list[Alert]:
    alerts, new = scorer.take_alerts()
    stats.alerts_emitted += len(alerts)
    stats.new_in_batch = new
    stats.emitted_in_batch = alerts
    for alert in new:
        stats.raised[alert.detector] += 1
    for alert in alerts:
        stats.latest[alert.detector] = alert
    return alerts


def run(
    source: Source,
    sink: Sink,
    scorer: Scorer,
    stats: Stats,
    *,
    stopping: Callable[[], bool] = lambda: False,
    on_batch: Callable[[Batch, float], None] | None = None,
    timer: Callable[[], float] = lambda: 0.0,
    raw_bytes: int = DEAD_LETTER_RAW_BYTES,
    restart: Callable[[], Scorer] | None = None,
    handoff: Handoff | None = None,
) -> None:
    """Score until the source ends (then close the event time, as a replay does) or `stopping`.

    An empty batch still moves the watermark (idle partitions), so decisions fall due without
    traffic. `on_batch` gets each batch and its scoring time, measured with the injected
    `timer` (the entry layer passes a clock; this module reads none). A dead letter's `raw` is
    cut to `raw_bytes`. A `fresh` batch (the source moved back after a new assignment) swaps in
    the scorer `restart` gives (new, or read from a snapshot); dead letters of messages below
    `batch.handed_on` were published before and are not published again. A merchant stage's
    `handoff` adds the batch's records for the card stage to its publish; a card stage's scorer
    (`stage="card"`) reads the cards topic (`score_cards`).
    """
    score = score_cards if scorer.stage == "card" else score_batch
    while not stopping():
        batch = source.poll()
        if batch is None:
            scorer.close()
            sink.publish(_collect(scorer, stats), [])
            return
        if batch.fresh:
            if restart is None:
                raise RuntimeError("the source restarted its partitions and no restart is given")
            scorer = restart()
            if handoff is not None:
                handoff.restart()
        started = timer()
        if handoff is None:
            alerts, rejected = score(batch, scorer, stats, raw_bytes)
        else:
            alerts, rejected = score_batch(batch, scorer, stats, raw_bytes, handoff)
        if batch.handed_on:
            rejected = [r for r in rejected if not _handed_on(r, batch.handed_on)]
        elapsed = timer() - started
        records = handoff.take() if handoff is not None else ()
        if alerts or rejected or records:
            sink.publish(alerts, rejected, records)
        if batch.chunks:
            source.commit(batch)
        if on_batch is not None:
            on_batch(batch, elapsed)


def _handed_on(rejection: Rejection, handed_on: Mapping[int, int]) -> bool:
    """Whether the dead letter's message lies below the offset its partition had committed."""
    return rejection.offset is not None and rejection.offset < handed_on.get(
        rejection.partition if rejection.partition is not None else -1, 0
    )


class MemorySource:
    """Batches from an iterable of messages: what `posmon replay` and the tests use.

    Each message's offset is its line number, counted from `first_line` (a file read from its
    start: 1), so a dead letter names its line.
    """

    def __init__(
        self, messages: Iterable[bytes], batch_size: int = 1000, *, first_line: int = 1
    ) -> None:
        self._messages: Iterator[bytes] = iter(messages)
        self._batch_size = batch_size
        self._first_line = first_line
        self._read = 0
        self.committed = 0

    def poll(self) -> Batch | None:
        batch = list(islice(self._messages, self._batch_size))
        if not batch:
            return None
        line = self._first_line + self._read
        self._read += len(batch)
        return Batch([(0, batch)], self._read, offsets={0: range(line, line + len(batch))})

    def commit(self, batch: Batch) -> None:
        assert isinstance(batch.position, int)
        self.committed = batch.position


class MemorySink:
    """Keeps everything published, in order."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dead_letters: list[Rejection] = []
        self.handoffs: list[Record] = []

    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[Record] = (),
    ) -> None:
        self.alerts.extend(alerts)
        self.dead_letters.extend(dead_letters)
        self.handoffs.extend(handoffs)

    def final_alerts(self) -> dict[str, Alert]:
        """Each alert id's newest version."""
        return newest(self.alerts)


def replay_messages(
    messages: Iterable[bytes], scorer: Scorer, batch_size: int = 1000
) -> tuple[MemorySink, Stats]:
    """Score a finite list of messages to the end of their event time."""
    sink, stats = MemorySink(), Stats()
    run(MemorySource(messages, batch_size), sink, scorer, stats)
    return sink, stats
