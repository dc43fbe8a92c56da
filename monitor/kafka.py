"""The Kafka edge: `KafkaSource` and `KafkaSink` implement `monitor.pipeline`'s protocols.

This is the only module that imports `kafka` (kafka-python 3). Offsets are committed by hand,
after the sink has the batch's alerts and dead letters (`pipeline.run`), so a crash re-reads the
uncommitted batch: nothing is lost, and deterministic alert ids keep a re-read from paging twice.

State rebuild. The scorer's state (attempts, windows, timers) lives in memory. With
`rebuild="beginning"` (the default) a source seeks each partition it newly receives back to the
beginning of the topic, so the scorer rebuilds that partition's event-time state from everything
retained before it catches up; alerts re-emitted on the way keep their ids, so the alerts topic
may carry duplicates but never misses one. Partitions a member keeps across a rebalance go on
where they were. Offsets at or below the group's committed offset are never committed, so a
restart during a rebuild never moves the group back, and `rebuilding` stays true until every
partition has passed the offset committed when it was assigned (/readyz: "not ready"). This
reads the whole retention on every start: right for the demo and short retention; with long
retention production wants a snapshot on a compacted changelog topic, or a replay from
`offsets_for_times(now - horizon)` (DESIGN.md, "State, restarts and scale-out").
`rebuild="committed"` resumes at the committed offsets with empty state (tests, stateless tools).

Tansu (0.6.0) quirks this module works around: `end_offsets()` can be wrong (101 for a partition
whose high watermark was 110, after batched sends), so lag and "read to the end" use the high
watermark of fetch responses (`consumer.highwater`); a group join takes about half of
`session_timeout_ms`; a `fetch_max_wait_ms` of 500 adds that much latency to every quiet poll
(hence 10); commit metadata is not kept; `read_committed` also returns aborted records, so nothing
here relies on transactions. kafka-python 3.0.12 drops a group join that completes while no
`poll()` is waiting for it and joins again (`coordinator/base.py`, `join_group_async`), so every
member must keep polling from a thread of its own (two members polled in turn from one thread
failed to settle within 40 s in 3 runs of 9).

Secrets (`sasl_password`, `ssl_password`) are `SecretStr`: masked in repr, str and JSON, unwrapped
only into the client configuration, which is never logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, NamedTuple

from kafka import (  # type: ignore[import-untyped]
    ConsumerRebalanceListener,
    KafkaAdminClient,
    KafkaConsumer,
    KafkaProducer,
    TopicPartition,
)
from kafka.admin import NewTopic  # type: ignore[import-untyped]
from kafka.errors import (  # type: ignore[import-untyped]
    CommitFailedError,
    KafkaError,
    TopicAlreadyExistsError,
)
from kafka.structs import OffsetAndMetadata  # type: ignore[import-untyped]
from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from monitor.alerts import Alert
from monitor.config import Seconds
from monitor.events import Rejection
from monitor.pipeline import Batch

log = logging.getLogger("posmon.kafka")

Role = Literal["consumer", "producer", "admin"]
Clock = Callable[[], float]
PositiveMs = Annotated[int, Field(gt=0)]


class KafkaSettings(BaseModel):
    """How posmon talks to Kafka: the `kafka:` section of the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bootstrap_servers: str = "localhost:9092"  # comma-separated host:port list
    topic: str = "pos.events"
    group: str = "posmon"
    alerts_topic: str = "posmon.alerts"
    client_id: str = "posmon"
    session_timeout_ms: PositiveMs = 10_000
    heartbeat_interval_ms: PositiveMs = 3_000
    fetch_max_wait_ms: Annotated[int, Field(ge=0)] = 10
    max_poll_records: PositiveMs = (
        2000  # bigger batches: fewer commits (500 gave 40k/s, 2000 57k/s)
    )
    poll_timeout_ms: Annotated[int, Field(ge=0)] = 100
    idle_partition_s: Seconds = 30.0
    rebuild: Literal["beginning", "committed"] = "beginning"
    request_timeout_ms: PositiveMs = 30_000
    delivery_timeout_ms: PositiveMs = 120_000
    max_block_ms: PositiveMs = 60_000
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None

    @model_validator(mode="after")
    def _consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        if sasl and not (self.sasl_mechanism and self.sasl_username and self.sasl_password):
            raise ValueError(f"{self.security_protocol} needs sasl_mechanism, _username, _password")
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL settings given but security_protocol is {self.security_protocol}"
            )
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError("heartbeat_interval_ms must be below session_timeout_ms")
        if self.delivery_timeout_ms < self.request_timeout_ms:
            raise ValueError("delivery_timeout_ms must be at least request_timeout_ms")
        return self


def client_config(settings: KafkaSettings, role: Role) -> dict[str, Any]:
    """kafka-python keyword arguments for a consumer (in the settings' group), producer or admin.

    Holds the secrets in clear: pass it to the client and never log it.
    """
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in settings.bootstrap_servers.split(",")],
        "client_id": settings.client_id,
        "request_timeout_ms": settings.request_timeout_ms,
        "security_protocol": settings.security_protocol,
    }
    if settings.sasl_mechanism is not None:
        assert settings.sasl_password is not None  # checked by the model
        config["sasl_mechanism"] = settings.sasl_mechanism
        config["sasl_plain_username"] = settings.sasl_username
        config["sasl_plain_password"] = settings.sasl_password.get_secret_value()
    for name in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        if getattr(settings, name) is not None:
            config[name] = getattr(settings, name)
    if settings.ssl_password is not None:
        config["ssl_password"] = settings.ssl_password.get_secret_value()
    if role == "consumer":
        config |= {
            "group_id": settings.group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "fetch_max_wait_ms": settings.fetch_max_wait_ms,
            "max_poll_records": settings.max_poll_records,
        }
    elif role == "producer":
        config |= {
            "acks": "all",
            "linger_ms": 5,
            "retries": 2_147_483_647,  # bounded by delivery_timeout_ms, as in the Java client
            "max_in_flight_requests_per_connection": 1,  # retries cannot reorder alert versions
            "delivery_timeout_ms": settings.delivery_timeout_ms,
            "max_block_ms": settings.max_block_ms,
        }
    return config


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Tells the source about rebalances. Runs on kafka-python's IO thread: must not block."""

    def __init__(self, source: KafkaSource) -> None:
        self._source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._source._assigned_by_rebalance()


class KafkaSource:
    """A consumer-group member reading `settings.topic` as `Batch`es (a `pipeline.Source`).

    `poll`, `commit` and `close` belong to one thread (the scoring loop). `lag()`,
    `assignment()`, `rebalances` and `rebuilding` are snapshots taken at the last poll, safe to
    read from another thread (a metrics collector, /readyz). `clock` only times idleness.
    """

    def __init__(self, settings: KafkaSettings, *, clock: Clock = time.monotonic) -> None:
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._held: frozenset[int] = frozenset()  # the assignment as of the last rebalance
        self._new: set[int] = set()  # newly assigned, committed offsets not read yet
        self._committed: dict[int, int] = {}  # highest offset the group committed, per partition
        self._rebuild_until: dict[int, int] = {}  # partition -> committed offset at assignment
        self._last_record: dict[int, float] = {}  # clock at the last record (or the assignment)
        self._lag: dict[int, int] = {}
        self._rebalances = 0
        self._known: frozenset[int] = frozenset()  # the assignment as the polling thread knows it
        self._consumer = KafkaConsumer(**client_config(settings, "consumer"))
        self._consumer.subscribe([settings.topic], listener=_Listener(self))
        self._closed = False

    @property
    def rebalances(self) -> int:
        """How many assignments this member received (the first one included)."""
        return self._rebalances

    @property
    def rebuilding(self) -> bool:
        """True while some partition is still below the offset committed when it was assigned."""
        return bool(self._rebuild_until)

    def assignment(self) -> set[int]:
        """The partitions this member holds."""
        return set(self._held)

    def lag(self) -> dict[int, int]:
        """Messages behind the high watermark per partition (unknown ones are left out)."""
        return dict(self._lag)

    def _assigned_by_rebalance(self) -> None:
        """Called on the IO thread: note the new partitions, seek them to the beginning if asked.

        `seek_to_beginning` only flags the partitions for an offset reset, so it is safe here;
        reading the committed offsets blocks, so `poll` does it on the polling thread.
        """
        held = frozenset(tp.partition for tp in self._consumer.assignment())
        with self._lock:
            new = held - self._held
            self._held = held
            self._new = (self._new | new) & held
            self._rebalances += 1
        log.info("assigned %s of %s (new: %s)", sorted(held), self._settings.topic, sorted(new))
        if new and self._settings.rebuild == "beginning":
            self._consumer.seek_to_beginning(*self._partitions(new))

    def _partitions(self, partitions: Iterable[int]) -> list[TopicPartition]:
        return [TopicPartition(self._settings.topic, p) for p in sorted(partitions)]

    def poll(self) -> Batch:
        """One `consumer.poll`: its messages by partition (tombstones as b""), never None."""
        s = self._settings
        records = self._consumer.poll(timeout_ms=s.poll_timeout_ms, max_records=s.max_poll_records)
        now = self._clock()
        with self._lock:
            new, self._new = self._new, set()
            held = self._held
        if new or held != self._known:
            self._on_assigned(new, held, now)
        chunks: list[tuple[int, list[bytes]]] = []
        position: dict[int, int] = {}
        for tp, messages in records.items():
            chunks.append(
                (tp.partition, [m.value if m.value is not None else b"" for m in messages])
            )
            position[tp.partition] = messages[-1].offset + 1
            self._last_record[tp.partition] = now
        return Batch(chunks, position, self._observe(held, now))

    def _on_assigned(self, new: set[int], held: frozenset[int], now: float) -> None:
        """After a rebalance, on the polling thread: forget revoked partitions, read the
        committed offsets of the new ones (the floor for commits and for `rebuilding`)."""
        for p in self._known - held:  # revoked: the next owner starts from the committed offset
            self._committed.pop(p, None)
            self._last_record.pop(p, None)
            self._rebuild_until.pop(p, None)
        self._known = held
        for tp in self._partitions(new):
            committed = self._consumer.committed(tp)
            self._committed[tp.partition] = committed or 0
            self._last_record[tp.partition] = now
            if self._settings.rebuild == "beginning" and committed:
                self._rebuild_until[tp.partition] = committed
        if self._rebuild_until:
            log.info("rebuilding state from the beginning up to %s", self._rebuild_until)

    def _observe(self, held: frozenset[int], now: float) -> frozenset[int] | None:
        """Update lag and rebuild progress; return the partitions that are not idle.

        Idle means caught up (position at the high watermark) and no record for
        `idle_partition_s`: such a partition must not hold the others' watermark back. With no
        partition assigned (before the first join, or all revoked) the answer is None, never an
        empty set: an empty set means "all idle", which moves the watermark to the newest event
        time, and would take decisions on state whose partitions are now read by another member.
        """
        lag: dict[int, int] = {}
        active: set[int] = set()
        for tp in self._partitions(held):
            p = tp.partition
            try:
                position = self._consumer.position(tp, timeout_ms=0)  # known: no I/O
            except KafkaError:
                position = None
            highwater = self._consumer.highwater(tp)
            if position is not None and highwater is not None:
                lag[p] = max(highwater - position, 0)
            if position is not None and position >= self._rebuild_until.get(p, 0):
                self._rebuild_until.pop(p, None)
            quiet = now - self._last_record.get(p, now) >= self._settings.idle_partition_s
            if not (quiet and lag.get(p) == 0):
                active.add(p)
        self._lag = lag
        return frozenset(active) if held else None

    def commit(self, batch: Batch) -> None:
        """Commit `batch.position` synchronously, per partition only when it moves forward.

        Partitions revoked since the poll are skipped (their new owner re-reads them), and a
        commit refused because the group rebalanced meanwhile is logged, not raised: the batch
        is redelivered to the partition's next owner, so nothing is lost.
        """
        if not isinstance(batch.position, dict):
            raise TypeError(f"not a KafkaSource batch position: {batch.position!r}")
        offsets = {
            TopicPartition(self._settings.topic, p): OffsetAndMetadata(offset, "", -1)
            for p, offset in batch.position.items()
            if p in self._held and offset > self._committed.get(p, 0)
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except CommitFailedError as exc:
            log.warning("commit refused after a rebalance, the batch will be re-read: %s", exc)
            return
        for tp, meta in offsets.items():
            self._committed[tp.partition] = meta.offset

    def close(self) -> None:
        """Leave the group cleanly, committing nothing more. Idempotent."""
        if not self._closed:
            self._closed = True
            self._consumer.close(autocommit=False)


class DeliveryFailed(RuntimeError):  # noqa: N818 - reads as the condition it reports
    """The broker did not acknowledge every record of a publish; the batch must not be committed."""


class KafkaSink:
    """Publishes alerts (key = alert_id) and dead letters to Kafka (a `pipeline.Sink`).

    Dead letters go unkeyed to `dlq_topic` (default `<topic>.dlq`): a rejected message may have
    no merchant to key it by; give that topic one partition to keep them in order.

    `publish` returns only when the broker acknowledged every record (`acks=all`); otherwise it
    raises `DeliveryFailed`, the caller crashes loudly, and a restart re-reads the batch.
    """

    def __init__(self, settings: KafkaSettings, *, dlq_topic: str | None = None) -> None:
        self.alerts_topic = settings.alerts_topic
        self.dlq_topic = dlq_topic or f"{settings.topic}.dlq"
        self._close_timeout_s = settings.delivery_timeout_ms / 1000
        self._producer = KafkaProducer(**client_config(settings, "producer"))

    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        if not alerts and not dead_letters:
            return
        send = self._producer.send
        try:
            futures = [
                send(self.alerts_topic, key=a.alert_id.encode(), value=a.model_dump_json().encode())
                for a in alerts
            ]
            futures += [
                send(self.dlq_topic, value=json.dumps(r.as_dead_letter()).encode())
                for r in dead_letters
            ]
            self._producer.flush()
        except KafkaError as exc:
            raise DeliveryFailed(f"publishing to Kafka failed: {exc}") from exc
        _check(futures)

    def close(self) -> None:
        """Close the producer; anything unsent has expired by `delivery_timeout_ms` anyway."""
        self._producer.close(timeout=self._close_timeout_s)


def _check(futures: Sequence[Any]) -> None:
    failed = [f for f in futures if not f.is_done or f.failed()]
    if failed:
        first = failed[0].exception if failed[0].is_done else "not sent"
        raise DeliveryFailed(f"{len(failed)} of {len(futures)} records not acknowledged: {first}")


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


def merchant_key(line: bytes) -> bytes | None:
    """The message key of an event line: its `merchant_id`, or None when it has none."""
    try:
        body = json.loads(line)
    except ValueError:
        return None
    merchant = body.get("merchant_id") if isinstance(body, dict) else None
    return merchant.encode() if isinstance(merchant, str) else None


class Pacer:
    """Spaces calls `1/rate` apart on `clock`: call `wait()` before each send.

    A schedule, not a sleep per call, so the rate holds on average whatever each send costs;
    when the caller fell more than a second behind, the schedule restarts instead of bursting.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be positive, not {rate}")
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._due: float | None = None

    def wait(self) -> None:
        now = self._clock()
        if self._due is None or now - self._due > 1.0:
            self._due = now
        elif now < self._due:
            self._sleep(self._due - now)
        self._due += self._interval


def produce_lines(
    settings: KafkaSettings,
    topic: str,
    lines: Iterable[bytes],
    *,
    rate: float | None = None,
    key: Callable[[bytes], bytes | None] = merchant_key,
    clock: Clock = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Send each line as one message (keyed by `key(line)`) at `rate` per second (None: at
    once); returns the count once every message is acknowledged, else raises `DeliveryFailed`."""
    pacer = Pacer(rate, clock=clock, sleep=sleep) if rate is not None else None
    errors: list[BaseException] = []
    count = 0
    producer = KafkaProducer(**client_config(settings, "producer"))
    try:
        for line in lines:
            if errors:
                break
            if pacer is not None:
                pacer.wait()
            producer.send(topic, key=key(line), value=line).add_errback(errors.append)
            count += 1
        producer.flush()
    except KafkaError as exc:
        raise DeliveryFailed(f"producing to {topic} failed after {count} messages: {exc}") from exc
    finally:
        producer.close(timeout=settings.delivery_timeout_ms / 1000)
    if errors:
        raise DeliveryFailed(f"{len(errors)} messages to {topic} not acknowledged: {errors[0]}")
    return count


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


class KafkaOutbox:
    """The dispatcher's durable writes: ledger records (keyed `alert_id/channel`, later ones
    win, so the topic may be compacted) and parked alerts on the alerts dead-letter topic.
    Each call returns only when the broker acknowledged every record."""

    def __init__(self, settings: KafkaSettings, *, ledger_topic: str, dlq_topic: str) -> None:
        self._producer = KafkaProducer(**client_config(settings, "producer"))
        self.ledger_topic, self.dlq_topic = ledger_topic, dlq_topic

    def record(self, records: Sequence[dict[str, object]]) -> None:
        futures = [
            self._producer.send(
                self.ledger_topic,
                key=f"{r['alert_id']}/{r['channel']}".encode(),
                value=json.dumps(r).encode(),
            )
            for r in records
        ]
        self._producer.flush()
        _check(futures)

    def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        """Tombstones for ledger entries past their retention (compaction drops them)."""
        futures = [
            self._producer.send(self.ledger_topic, key=f"{alert_id}/{channel}".encode(), value=None)
            for alert_id, channel in keys
        ]
        self._producer.flush()
        _check(futures)

    def park(self, parked: Sequence[dict[str, object]]) -> None:
        futures = [
            self._producer.send(self.dlq_topic, value=json.dumps(p).encode()) for p in parked
        ]
        self._producer.flush()
        _check(futures)

    def close(self) -> None:
        self._producer.close()


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
