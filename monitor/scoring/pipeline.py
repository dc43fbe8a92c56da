"""The scoring loop over an abstract `Source` and `Sink`, the same for replay and for the stream.

    poll a batch -> decode each message (rejects become dead letters) -> score -> advance the
    watermark -> publish the batch's alerts and dead letters -> commit the batch

The sink returns only once it has durably handed the batch on (a file written, a broker's
acknowledgement), and only then is the batch committed: nothing is lost, and a redelivered batch
yields the same alert ids, so nothing is paged twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from monitor.core.alerts import Alert
from monitor.core.batches import Batch, Source
from monitor.core.events import Event, Rejection, decode
from monitor.scoring.scorer import Scorer


class Sink(Protocol):
    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        """Hand alerts and dead letters on durably; return only when that is done."""


@dataclass(slots=True)
class Stats:
    """What a run did, for the summary table and the metrics."""

    messages: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    alerts_emitted: int = 0  # every version, updates included
    raised: Counter[str] = field(default_factory=Counter)  # new alerts by detector
    latest: dict[str, Alert] = field(default_factory=dict)  # detector -> its newest alert
    new_in_batch: list[Alert] = field(default_factory=list)  # new alerts of the last batch
    emitted_in_batch: list[Alert] = field(default_factory=list)  # every alert of the last batch


def score_batch(batch: Batch, scorer: Scorer, stats: Stats) -> tuple[list[Alert], list[Rejection]]:
    """Decode and score one batch; returns the alerts it opened or grew and its dead letters."""
    rejected: list[Rejection] = []
    for partition, messages in batch.chunks:
        # Decode the whole chunk, then score it in one call (not one call per event).
        events = []
        for raw in messages:
            decoded = decode(raw)
            if type(decoded) is Event:
                events.append(decoded)
            else:
                assert isinstance(decoded, Rejection)
                rejected.append(decoded)
                stats.rejected[decoded.reason] += 1
        scorer.use_partition(partition, batch.active)
        scorer.process_many(events)
        stats.messages += len(messages)
    scorer.advance(batch.active)
    return _collect(scorer, stats), rejected


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
) -> None:
    """Score until the source ends (then close the event time, as a replay does) or `stopping`.

    An empty batch still moves the watermark (idle partitions), so decisions fall due without
    traffic. `on_batch` gets each batch and its scoring time, measured with the injected
    `timer` (the entry layer passes a clock; this module reads none).
    """
    while not stopping():
        batch = source.poll()
        if batch is None:
            scorer.close()
            sink.publish(_collect(scorer, stats), [])
            return
        started = timer()
        alerts, rejected = score_batch(batch, scorer, stats)
        elapsed = timer() - started
        if alerts or rejected:
            sink.publish(alerts, rejected)
        if batch.chunks:
            source.commit(batch)
        if on_batch is not None:
            on_batch(batch, elapsed)


class MemorySource:
    """Batches from an iterable of messages: what `posmon replay` and the tests use."""

    def __init__(self, messages: Iterable[bytes], batch_size: int = 1000) -> None:
        self._messages: Iterator[bytes] = iter(messages)
        self._batch_size = batch_size
        self._read = 0
        self.committed = 0

    def poll(self) -> Batch | None:
        batch = list(islice(self._messages, self._batch_size))
        if not batch:
            return None
        self._read += len(batch)
        return Batch([(0, batch)], self._read)

    def commit(self, batch: Batch) -> None:
        assert isinstance(batch.position, int)
        self.committed = batch.position


class MemorySink:
    """Keeps everything published, in order."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dead_letters: list[Rejection] = []

    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        self.alerts.extend(alerts)
        self.dead_letters.extend(dead_letters)

    def final_alerts(self) -> dict[str, Alert]:
        """Each alert id's last version."""
        return {alert.alert_id: alert for alert in self.alerts}


def replay_messages(
    messages: Iterable[bytes], scorer: Scorer, batch_size: int = 1000
) -> tuple[MemorySink, Stats]:
    """Score a finite list of messages to the end of their event time."""
    sink, stats = MemorySink(), Stats()
    run(MemorySource(messages, batch_size), sink, scorer, stats)
    return sink, stats
