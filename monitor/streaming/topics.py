"""Topics as a whole: creating them, reading one from the beginning, the group's commits, the
dispatcher's ledger. Reads end at the fetch high watermark, never at `end_offsets()` (which the
embedded broker answers wrongly)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Collection, Mapping
from typing import Any, NamedTuple

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition  # type: ignore[import-untyped]
from kafka.admin import NewTopic  # type: ignore[import-untyped]
from kafka.errors import TopicAlreadyExistsError  # type: ignore[import-untyped]

from monitor.streaming.client import client_config
from monitor.streaming.settings import KafkaSettings

log = logging.getLogger("posmon.kafka")


def ensure_topics(
    settings: KafkaSettings, topics: Mapping[str, int], *, replication_factor: int = -1
) -> list[str]:
    """Create the topics that do not exist (name -> partitions); returns those created.

    `replication_factor=-1` takes the broker's default. An existing topic is left as it is, even
    with another number of partitions.
    """
    admin = KafkaAdminClient(**client_config(settings, "admin"))
    created: list[str] = []
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics([NewTopic(name, partitions, replication_factor)])
            except TopicAlreadyExistsError:
                continue  # created meanwhile by another process: what we wanted
            created.append(name)
    finally:
        admin.close()
    if created:
        log.info("created topics %s", created)
    return created


class Record(NamedTuple):
    """A record as `read_topic` returns it; a tombstone's value is b"", as from `KafkaSource`.

    `timestamp` is the record's Kafka timestamp in epoch milliseconds (CreateTime: set by the
    producer when it sent the record).
    """

    key: bytes | None
    value: bytes
    partition: int
    offset: int
    timestamp: int


def read_topic(settings: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> list[Record]:
    """Every record of `topic` from the beginning to the high watermark, without a group.

    Ordered by partition, then offset. Raises `TimeoutError` when the end is not reached in
    `timeout_s` (the high watermark, not `end_offsets()`, which Tansu answers wrongly).
    """
    config = client_config(settings, "consumer") | {"group_id": None}
    consumer = KafkaConsumer(**config)
    deadline = time.monotonic() + timeout_s
    records: list[Record] = []
    try:
        partitions = _wait_for_partitions(consumer, topic, deadline)
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while not _caught_up(consumer, partitions):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic}: not read to its end in {timeout_s} s")
            for tp, messages in consumer.poll(timeout_ms=100).items():
                records += (
                    Record(m.key, m.value or b"", tp.partition, m.offset, m.timestamp)
                    for m in messages
                )
    finally:
        consumer.close(autocommit=False)
    return sorted(records, key=lambda r: (r.partition, r.offset))


def partition_count(settings: KafkaSettings, topic: str, *, timeout_s: float = 10.0) -> int:
    """How many partitions `topic` has; raises `TimeoutError` when it is not found in time."""
    consumer = KafkaConsumer(**(client_config(settings, "consumer") | {"group_id": None}))
    try:
        return len(_wait_for_partitions(consumer, topic, time.monotonic() + timeout_s))
    finally:
        consumer.close(autocommit=False)


def committed_offsets(settings: KafkaSettings, *, timeout_s: float = 10.0) -> dict[int, int]:
    """The offsets `settings.group` committed on `settings.topic`, read without joining the group
    (partitions without a commit are left out)."""
    consumer = KafkaConsumer(**client_config(settings, "consumer"))
    try:
        deadline = time.monotonic() + timeout_s
        committed = {
            tp.partition: consumer.committed(tp, timeout_ms=int(timeout_s * 1000))
            for tp in _wait_for_partitions(consumer, settings.topic, deadline)
        }
    finally:
        consumer.close(autocommit=False)
    return {p: offset for p, offset in committed.items() if offset is not None}


def _wait_for_partitions(consumer: Any, topic: str, deadline: float) -> list[TopicPartition]:
    while True:
        numbers = consumer.partitions_for_topic(topic)
        if numbers:
            return [TopicPartition(topic, p) for p in sorted(numbers)]
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} not found")
        time.sleep(0.05)


def _caught_up(consumer: Any, partitions: Collection[TopicPartition]) -> bool:
    for tp in partitions:
        highwater = consumer.highwater(tp)
        position = consumer.position(tp, timeout_ms=0)
        if highwater is None or position is None or position < highwater:
            return False
    return True


def read_ledger(
    settings: KafkaSettings, topic: str, *, timeout_s: float = 30.0
) -> list[dict[str, object]]:
    """The live ledger records on `topic` (the dispatcher restores its dedup from them): the
    newest per key, none for a key whose newest record is a tombstone."""
    records: dict[bytes | None, dict[str, object]] = {}
    for record in read_topic(settings, topic, timeout_s=timeout_s):
        if not record.value:
            records.pop(record.key, None)
            continue
        try:
            value = json.loads(record.value)
        except ValueError:
            continue
        if isinstance(value, dict):
            records.pop(record.key, None)  # keep the order of the newest writes
            records[record.key] = value
    return list(records.values())
