"""The labels topic (`kafka.labels_topic`, default `posmon.labels`): the risk team's verdicts
(`monitor.core.labels`), written by `posmon label` and read whole by every `posmon run`.

Labels are few, and every scorer needs all of them: a card pays at any terminal, whatever
partitions of the events a member holds. So the topic is not split among a group's members:
`KafkaLabels` reads it without a consumer group (kafka-python's subscription without a
`group_id` assigns every partition to the one consumer, including partitions added later),
from the beginning, and commits nothing. A new state (a start, a restart, any new assignment)
gets every label again (`rewind`): the scorer holds each one until the watermark passes its
`known_at`, and a label given twice changes nothing. Between batches, `poll` takes what arrived
without waiting.

A record that is not a label (not JSON, not an object, a field missing or broken) is skipped,
counted once (`LabelRead.invalid`, also after a rewind reads it again) and logged by its
coordinates `<topic>/<partition>/<offset>` and the rule it breaks, never its content. It is
not a dead letter: it stays where it is, in a topic every monitor re-reads from the beginning,
which a dead-letter topic would only repeat once per monitor and start (docs/contract.md,
"Labels").
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from monitor.core.labels import Label, LabelError, parse_label
from monitor.streaming.client import DeliveryFailed, client_config
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import ensure_topics

log = logging.getLogger("posmon.labels")

# How long a rewind reads before the scoring goes on (the rest then comes with the next polls);
# labels are few: their topic is read in well under a second.
CATCH_UP_S = 10.0
# With no partition of the topic known after this long, it does not exist (yet): go on.
_NO_TOPIC_S = 2.0
_MAX_RECORDS = 10_000
_LOGGED_PER_READ = 5  # records that are not labels logged one by one per read; then a count
_CLOSE_TIMEOUT_MS = 250
# kafka-python 3.0.12 closes its connections from the calling thread while its IO thread may be
# reading the answer to a fetch still in flight, and logs that as an ERROR with a traceback
# (3 closes in 150 right after a poll, measured; none 100 ms after): `close` lets the last
# fetch's answer arrive first.
_SETTLE_S = 0.05
_SETTLE_MAX_S = 0.2  # a stop must not wait out a long `fetch_max_wait_ms`


class LabelRead(NamedTuple):
    """What one read gave: the labels, in topic order per partition, and how many records that
    are not labels it met for the first time."""

    labels: list[Label]
    invalid: int


def ensure_labels_topic(settings: KafkaSettings, topic: str) -> None:
    """Create `topic` (one partition) if it does not exist; a broker that refuses (no right to
    create topics) is logged, not raised: the topic is read once someone creates it."""
    try:
        ensure_topics(settings, {topic: 1})
    except KafkaError as exc:
        log.warning(
            "cannot create the labels topic %s (%s); its labels are read once it exists",
            topic,
            exc,
        )


class KafkaLabels:
    """Every partition of the labels topic, without a group (module docstring). `poll`, `rewind`
    and `close` belong to one thread (the scoring loop)."""

    def __init__(self, settings: KafkaSettings, topic: str) -> None:
        self.topic = topic
        ensure_labels_topic(settings, topic)
        config = client_config(settings, "consumer") | {"group_id": None}
        self._consumer = KafkaConsumer(**config)
        self._consumer.subscribe([topic])  # no group: every partition is this consumer's
        self._counted: dict[int, int] = {}  # partition -> offset after the last record counted
        self._fetch_wait_s = min(settings.fetch_max_wait_ms / 1000, _SETTLE_MAX_S)
        self._polled_at = 0.0  # time.monotonic() of the last poll (a fetch may be in flight)
        self._closed = False

    def poll(self) -> LabelRead:
        """The labels that arrived since the last call, without waiting for more."""
        self._polled_at = time.monotonic()
        try:
            records = self._consumer.poll(timeout_ms=0, max_records=_MAX_RECORDS)
        except KafkaError as exc:  # an outage: kafka-python reconnects, the next poll goes on
            log.warning("cannot read the labels topic %s now: %s", self.topic, exc)
            return LabelRead([], 0)
        return self._read(records)

    def rewind(
        self, *, stopping: Callable[[], bool] = lambda: False, timeout_s: float = CATCH_UP_S
    ) -> LabelRead:
        """Every label from the beginning of the topic to its end as of now, for a new state:
        seeks back and reads until each partition's position reaches its high watermark (from
        the fetch answers; the embedded broker answers `end_offsets()` wrongly), `timeout_s`
        passes or `stopping()` says so. What is not read by then comes with the next polls."""
        started = time.monotonic()
        labels: list[Label] = []
        invalid = 0
        try:
            if self._consumer.assignment():
                self._consumer.seek_to_beginning()
            while not stopping():
                waited = time.monotonic() - started
                assigned = self._consumer.assignment()
                if assigned and _caught_up(self._consumer, assigned):
                    break
                if waited >= timeout_s or (not assigned and waited >= _NO_TOPIC_S):
                    log.warning(
                        "the labels topic %s was not read to its end within %.0f s%s; the rest"
                        " is taken as it comes",
                        self.topic,
                        waited,
                        "" if assigned else " (it has no partitions yet)",
                    )
                    break
                self._polled_at = time.monotonic()
                read = self._read(self._consumer.poll(timeout_ms=100, max_records=_MAX_RECORDS))
                labels += read.labels
                invalid += read.invalid
        except KafkaError as exc:
            log.warning("cannot read the labels topic %s now: %s", self.topic, exc)
        log.info(
            "%d labels read from %s (%d records that are not labels)",
            len(labels),
            self.topic,
            invalid,
        )
        return LabelRead(labels, invalid)

    def _read(self, records: Mapping[TopicPartition, Sequence[Any]]) -> LabelRead:
        labels: list[Label] = []
        invalid = 0
        for tp, messages in records.items():
            counted = self._counted.get(tp.partition, 0)
            for m in messages:
                try:
                    labels.append(parse_label(m.value if m.value is not None else b""))
                except LabelError as exc:
                    if m.offset < counted:
                        continue  # met before, and counted then (a rewind reads it again)
                    invalid += 1
                    if invalid <= _LOGGED_PER_READ:
                        log.warning(
                            "labels record %s/%d/%d skipped: %s",
                            self.topic,
                            tp.partition,
                            m.offset,
                            exc,
                        )
            if messages:
                self._counted[tp.partition] = max(counted, messages[-1].offset + 1)
        if invalid > _LOGGED_PER_READ:
            log.warning(
                "%d more labels records of %s skipped: not labels",
                invalid - _LOGGED_PER_READ,
                self.topic,
            )
        return LabelRead(labels, invalid)

    def close(self) -> None:
        """Idempotent; the answer to the last fetch gets `fetch_max_wait_ms` (at most 0.2 s) and
        a little more to arrive (`_SETTLE_S`), a broker that does not answer a quarter of a
        second."""
        if not self._closed:
            self._closed = True
            settle = self._polled_at + self._fetch_wait_s + _SETTLE_S - time.monotonic()
            if settle > 0:
                time.sleep(settle)
            self._consumer.close(autocommit=False, timeout_ms=_CLOSE_TIMEOUT_MS)


def _caught_up(consumer: Any, partitions: set[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = consumer.highwater(tp)
        try:
            position = consumer.position(tp, timeout_ms=0)
        except KafkaError:
            return False
        if highwater is None or position is None or position < highwater:
            return False
    return True


def send_label(settings: KafkaSettings, topic: str, label: Label) -> tuple[int, int]:
    """Produce `label` to `topic`, keyed by the id it judges (the verdicts on one purchase stay
    in order on one partition), and return (partition, offset) once the broker acknowledged it
    (`acks=all`); raises `DeliveryFailed` with one line otherwise. Creates the topic first, as
    `posmon run` does."""
    ensure_labels_topic(settings, topic)
    target = label.event_id if label.event_id is not None else label.alert_id
    assert target is not None  # a label names exactly one
    servers = settings.bootstrap_servers
    try:
        producer = KafkaProducer(**client_config(settings, "producer"))
    except KafkaError as exc:
        raise DeliveryFailed(f"no Kafka broker answered at {servers}: {exc}") from exc
    try:
        future = producer.send(topic, key=target.encode(), value=label.to_json())
        sent = future.get(timeout=settings.delivery_timeout_ms / 1000)
    except KafkaError as exc:
        raise DeliveryFailed(
            f"the Kafka broker at {servers} did not acknowledge the label on {topic}: {exc}"
        ) from exc
    finally:
        producer.close(timeout=_CLOSE_TIMEOUT_MS / 1000)
    return int(sent.partition), int(sent.offset)
