"""One contract, two implementations: the in-memory Source/Sink and the Kafka ones.

Each `Harness` adapts a pair to the same few verbs (produce, open a source, close it, make a
sink, read back what it published), so every assertion below runs unchanged against both. The
Kafka harness uses the embedded broker with `rebuild="committed"`: a restarted member resumes at
the group's committed offsets, as the memory source resumes from the remaining messages.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import pytest

from monitor.core.alerts import Alert, alert_id
from monitor.core.batches import Batch, Source
from monitor.core.events import Rejection
from monitor.scoring.pipeline import MemorySink, MemorySource, Sink
from monitor.streaming.produce import produce_lines
from monitor.streaming.sink import KafkaSink
from monitor.streaming.source import KafkaSource
from monitor.streaming.topics import read_topic
from tests.broker import fresh_topic, kafka_settings

BATCH = 7  # messages per poll, small so that the tests see several batches


class Harness(Protocol):
    def produce(self, messages: Sequence[bytes]) -> None: ...
    def open_source(self) -> Source: ...
    def close_source(self, source: Source) -> None: ...
    def open_sink(self) -> Sink: ...
    def published(self, sink: Sink) -> tuple[list[tuple[str, Alert]], list[dict[str, object]]]:
        """(alert key, alert) and dead letters as a reader of the outputs sees them, in order."""
        ...


class MemoryHarness:
    """The memory pair. A restart resumes from the messages after the committed position."""

    def __init__(self) -> None:
        self._messages: list[bytes] = []
        self._committed = 0

    def produce(self, messages: Sequence[bytes]) -> None:
        self._messages += messages

    def open_source(self) -> Source:
        return MemorySource(self._messages[self._committed :], batch_size=BATCH)

    def close_source(self, source: Source) -> None:
        assert isinstance(source, MemorySource)
        self._committed += source.committed

    def open_sink(self) -> Sink:
        return MemorySink()

    def published(self, sink: Sink) -> tuple[list[tuple[str, Alert]], list[dict[str, object]]]:
        assert isinstance(sink, MemorySink)
        return [(a.alert_id, a) for a in sink.alerts], [
            r.as_dead_letter() for r in sink.dead_letters
        ]


class KafkaHarness:
    """The Kafka pair on a fresh 3-partition topic of the embedded broker, one group."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        broker = request.getfixturevalue("broker")
        self.topic = fresh_topic(broker, partitions=3)
        self.settings = kafka_settings(
            broker, self.topic, rebuild="committed", max_poll_records=BATCH
        )

    def produce(self, messages: Sequence[bytes]) -> None:
        assert produce_lines(self.settings, self.topic, messages) == len(messages)

    def open_source(self) -> Source:
        return KafkaSource(self.settings)

    def close_source(self, source: Source) -> None:
        assert isinstance(source, KafkaSource)
        source.close()

    def open_sink(self) -> Sink:
        return KafkaSink(self.settings)

    def published(self, sink: Sink) -> tuple[list[tuple[str, Alert]], list[dict[str, object]]]:
        assert isinstance(sink, KafkaSink)
        alerts = [
            (r.key.decode() if r.key is not None else "", Alert.model_validate_json(r.value))
            for r in read_topic(self.settings, sink.alerts_topic)
        ]
        dead = [json.loads(r.value) for r in read_topic(self.settings, sink.dlq_topic)]
        return alerts, dead


@pytest.fixture(params=["memory", "kafka"])
def harness(request: pytest.FixtureRequest) -> Harness:
    return MemoryHarness() if request.param == "memory" else KafkaHarness(request)


def messages(n: int, merchants: int = 5) -> list[bytes]:
    return [json.dumps({"merchant_id": f"M-{i % merchants}", "seq": i}).encode() for i in range(n)]


def seq(message: bytes) -> int:
    value: int = json.loads(message)["seq"]
    return value


def drain(
    source: Source, expected: int, *, commit: int = 0, timeout_s: float = 30.0
) -> list[Batch]:
    """Poll until `expected` messages came (a Kafka member first has to join its group),
    committing each of the first `commit` non-empty batches right after it, as `run` does."""
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout_s
    while sum(map(len, batches)) < expected:
        batch = source.poll()
        if batch is None:
            break
        if len(batch):
            batches.append(batch)
            if len(batches) <= commit:
                source.commit(batch)
        assert time.monotonic() < deadline, f"{sum(map(len, batches))} of {expected} in time"
    return batches


def nothing_more(source: Source) -> bool:
    batch = source.poll()
    return batch is None or len(batch) == 0


def flatten(batches: Sequence[Batch]) -> Iterator[tuple[int, bytes]]:
    for batch in batches:
        for partition, chunk in batch.chunks:
            for message in chunk:
                yield partition, message


def test_everything_produced_is_polled_once_in_order_within_a_partition(harness: Harness) -> None:
    produced = messages(60)
    harness.produce(produced)
    source = harness.open_source()
    try:
        polled = list(flatten(drain(source, len(produced))))
        assert nothing_more(source)
    finally:
        harness.close_source(source)

    assert sorted(seq(m) for _, m in polled) == [seq(m) for m in produced]  # each exactly once
    by_partition: dict[int, list[int]] = defaultdict(list)
    partition_of: dict[str, set[int]] = defaultdict(set)
    for partition, message in polled:
        by_partition[partition].append(seq(message))
        partition_of[json.loads(message)["merchant_id"]].add(partition)
    assert all(order == sorted(order) for order in by_partition.values())
    assert all(len(partitions) == 1 for partitions in partition_of.values())  # keyed by merchant


def test_a_restart_resumes_after_the_commit_and_redelivers_the_rest(harness: Harness) -> None:
    produced = messages(40)
    harness.produce(produced)
    source = harness.open_source()
    try:
        # The later batches were "in flight" (polled, not yet committed) when it stopped.
        batches = drain(source, len(produced), commit=2)
        assert len(batches) >= 3
    finally:
        harness.close_source(source)
    committed = {seq(m) for _, m in flatten(batches[:2])}

    restarted = harness.open_source()
    try:
        again = drain(restarted, len(produced) - len(committed), commit=len(produced))
        assert nothing_more(restarted)
    finally:
        harness.close_source(restarted)
    redelivered = [seq(m) for _, m in flatten(again)]
    assert sorted(redelivered) == sorted(set(range(40)) - committed)  # none lost, none twice


def test_published_alerts_and_dead_letters_read_back_complete_and_in_order(
    harness: Harness,
) -> None:
    first, grown, other = sample_alert("A", 1), sample_alert("A", 2), sample_alert("B", 1)
    rejects = [Rejection("not_json", f"bad line {i}", f"garbage {i}") for i in range(5)]
    sink = harness.open_sink()
    try:
        sink.publish([first, other], rejects[:2])
        sink.publish([grown], rejects[2:])
        sink.publish([], [])
    finally:
        close = getattr(sink, "close", None)
        if close is not None:
            close()

    alerts, dead_letters = harness.published(sink)
    assert all(key == alert.alert_id for key, alert in alerts)
    versions: dict[str, list[Alert]] = defaultdict(list)
    for _, alert in alerts:
        versions[alert.alert_id].append(alert)
    assert versions == {first.alert_id: [first, grown], other.alert_id: [other]}
    assert dead_letters == [r.as_dead_letter() for r in rejects]


def sample_alert(incident: str, count: int) -> Alert:
    t0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    return Alert(
        alert_id=alert_id("large_amount", incident),
        detector="large_amount",
        severity="warning",
        terminal_id="T-0001",
        merchant_id="M-01",
        card_id="tok_card_0001",
        first_seen=t0,
        last_seen=t0 + timedelta(seconds=count),
        event_ids=[f"e{i}" for i in range(count)],
        count=count,
        summary=f"{count} large attempts",
        details={"amount_minor": 2_000_000},
    )
