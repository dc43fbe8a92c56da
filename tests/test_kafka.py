"""What only the Kafka edge does: lag, idleness, state rebuild, delivery failures, settings,
producing lines, and the admin helpers. The contract both pairs share is in
test_source_contract.py. Every group join costs about 3 s on Tansu, so the tests join rarely."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime

import pytest
from kafka import KafkaProducer  # type: ignore[import-untyped]
from pydantic import ValidationError

from monitor.core.alerts import Alert, alert_id
from monitor.core.batches import Batch
from monitor.streaming.client import DeliveryFailed, client_config
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import Pacer, merchant_key, produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.sink import KafkaSink
from monitor.streaming.source import KafkaSource
from monitor.streaming.topics import committed_offsets, ensure_topics, read_topic
from tests.broker import fresh_topic, kafka_settings


def produce_to(settings: KafkaSettings, values: Mapping[int, Sequence[bytes | None]]) -> None:
    """Exact placement: each value to its partition (None is a tombstone)."""
    producer = KafkaProducer(**client_config(settings, "producer"))
    try:
        for partition, batch in values.items():
            for value in batch:
                producer.send(settings.topic, value=value, key=b"k", partition=partition).get(10)
    finally:
        producer.close()


def poll_until(source: KafkaSource, done: object, timeout_s: float = 20.0) -> list[Batch]:
    """Poll (keeping the non-empty batches) until `done(batches)` holds."""
    assert callable(done)
    batches: list[Batch] = []
    deadline = time.monotonic() + timeout_s
    while not done(batches):
        assert time.monotonic() < deadline, "timed out"
        batch = source.poll()
        if len(batch):
            batches.append(batch)
    return batches


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_lag_comes_from_the_high_watermark_and_idle_partitions_leave_active(
    broker: EmbeddedBroker,
) -> None:
    topic = fresh_topic(broker, partitions=3)
    settings = kafka_settings(broker, topic, max_poll_records=4, idle_partition_s=30)
    produce_to(settings, {0: [b"a"] * 9 + [None], 2: [b"c"] * 5})  # partition 1 stays empty
    clock = FakeClock()
    source = KafkaSource(settings, clock=clock)
    try:
        consumed = {0: 0, 1: 0, 2: 0}
        produced = {0: 10, 1: 0, 2: 5}
        values: list[bytes] = []
        most_behind = 0
        deadline = time.monotonic() + 20
        while len(values) < 15:
            assert time.monotonic() < deadline
            batch = source.poll()
            if not source.assignment():  # still joining
                assert batch.active is None  # not "all idle", which would close the event time
            for partition, chunk in batch.chunks:
                consumed[partition] += len(chunk)
                values += chunk
            for partition, lag in source.lag().items():  # unknown partitions are left out
                assert lag == produced[partition] - consumed[partition]
                most_behind = max(most_behind, lag)
        assert most_behind > 0  # lag was seen before it was caught up
        assert b"" in values  # the tombstone is passed on (to be rejected), not dropped
        assert source.assignment() == {0, 1, 2} and source.rebalances == 1

        caught_up = source.poll()
        assert source.lag() == {0: 0, 1: 0, 2: 0}
        assert caught_up.active == {0, 1, 2}  # caught up, but heard from recently

        clock.now += 31  # a loop that stalled: the high watermarks it knows may be old news
        assert source.poll().active == {0, 1, 2}
        for _ in range(3):  # seen caught up at every poll for `idle_partition_s`: idle
            clock.now += 11
            quiet = source.poll()
        assert quiet.active == frozenset()

        produce_to(settings, {2: [b"late"]})
        woken = poll_until(source, lambda b: len(b) == 1)[0]
        assert woken.chunks == [(2, [b"late"])] and woken.active == {2}
    finally:
        source.close()


def test_rebuild_rereads_from_the_beginning_but_never_commits_below_the_group(
    broker: EmbeddedBroker,
) -> None:
    topic = fresh_topic(broker, partitions=2)
    settings = kafka_settings(broker, topic, max_poll_records=3)
    produce_to(settings, {0: [b"%d" % i for i in range(10)], 1: [b"%d" % i for i in range(6)]})
    first = KafkaSource(settings)
    try:
        for batch in poll_until(first, lambda b: sum(map(len, b)) == 16):
            first.commit(batch)
    finally:
        first.close()
    assert committed_offsets(settings) == {0: 10, 1: 6}

    second = KafkaSource(settings)  # rebuild="beginning" is the default
    try:
        batches = poll_until(second, lambda b: len(b) == 1)
        assert second.rebuilding  # 3 records read, the group had committed 16
        second.commit(batches[0])  # below the committed offsets: must not move them back
        assert committed_offsets(settings) == {0: 10, 1: 6}

        batches += poll_until(second, lambda b: sum(map(len, b)) == 13)
        starts: dict[int, int] = {}
        for batch in batches:
            assert isinstance(batch.position, dict)
            for partition, chunk in batch.chunks:
                starts.setdefault(partition, batch.position[partition] - len(chunk))
                second.commit(batch)
        assert starts == {0: 0, 1: 0}  # every partition re-read from offset 0
        assert not second.rebuilding
        assert committed_offsets(settings) == {0: 10, 1: 6}

        produce_to(settings, {1: [b"new"]})
        fresh = poll_until(second, lambda b: len(b) == 1)[0]
        second.commit(fresh)
        assert fresh.chunks == [(1, [b"new"])]
        assert committed_offsets(settings) == {0: 10, 1: 7}
    finally:
        second.close()


class Member(threading.Thread):
    """A group member polling on a thread of its own, as each process would: kafka-python 3.0.12
    drops a join that completes while its consumer is not inside `poll()`, so two members
    polled in turn from one thread can rebalance forever."""

    def __init__(self, settings: KafkaSettings) -> None:
        super().__init__(daemon=True)
        self.source = KafkaSource(settings)
        self.batches: list[Batch] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                batch = self.source.poll()
                if len(batch) or batch.fresh:
                    self.source.commit(batch)
                    self.batches.append(batch)
        except BaseException as exc:  # handed to the test thread, which fails on it
            self.error = exc
        finally:
            self.source.close()

    def messages(self, since: int = 0) -> dict[int, list[bytes]]:
        by_partition: dict[int, list[bytes]] = {}
        for batch in self.batches[since:]:
            for partition, chunk in batch.chunks:
                by_partition.setdefault(partition, []).extend(chunk)
        return by_partition

    def finish(self) -> None:
        self.stopping.set()
        self.join(timeout=20)
        assert self.error is None, self.error


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_rebalance_restarts_each_member_from_its_partitions_beginning(
    broker: EmbeddedBroker,
) -> None:
    """The scorer's state spans all the partitions a member holds, so after any change of
    assignment each member starts anew: a partition it kept is read again as well, and the
    watermark cannot run ahead of a partition it has not read back yet."""
    topic = fresh_topic(broker, partitions=4)
    settings = kafka_settings(broker, topic)
    produced = {p: [b"%d-%d" % (p, i) for i in range(3)] for p in range(4)}
    produce_to(settings, produced)
    old = Member(settings)
    old.start()
    new: Member | None = None
    try:
        wait_for(lambda: old.messages() == produced)
        before = len(old.batches)
        new = Member(settings)
        new.start()
        joined = new
        wait_for(lambda: old.source.rebalances == 2 and bool(joined.source.assignment()))
        wait_for(lambda: sum(map(len, joined.messages().values())) == 6)
        kept, taken = old.source.assignment(), new.source.assignment()
        assert kept.isdisjoint(taken) and kept | taken == {0, 1, 2, 3}
        wait_for(lambda: sum(map(len, old.messages(since=before).values())) == 6)
        assert old.messages(since=before) == {p: produced[p] for p in kept}  # read again
        assert new.messages() == {p: produced[p] for p in taken}  # re-read from the beginning
        assert any(batch.fresh for batch in old.batches[before:])
        assert not new.source.rebuilding and not old.source.rebuilding
    finally:
        old.finish()
        if new is not None:
            new.finish()
    assert committed_offsets(settings) == {0: 3, 1: 3, 2: 3, 3: 3}  # nothing moved back


def sample_alert() -> Alert:
    t0 = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)
    return Alert(
        alert_id=alert_id("large_amount", "x"),
        detector="large_amount",
        severity="warning",
        terminal_id="T-1",
        merchant_id="M-1",
        card_id=None,
        first_seen=t0,
        last_seen=t0,
        event_ids=["e1"],
        count=1,
        summary="large",
        details={},
    )


def test_a_send_the_broker_does_not_acknowledge_waits_until_stopped_then_raises() -> None:
    """An outage is waited out (tests/test_broker_outage.py), never skipped: only a stop ends the
    wait, with `PublishInterrupted`, a `DeliveryFailed` (the batch is not committed)."""
    with EmbeddedBroker(stop_grace_s=0.1) as doomed:
        doomed.create_topics({"ev.alerts": 1, "ev.dlq": 1})
        settings = KafkaSettings(
            bootstrap_servers=doomed.bootstrap_servers,
            topic="ev",
            alerts_topic="ev.alerts",
            request_timeout_ms=500,
            delivery_timeout_ms=1000,
            max_block_ms=500,
        )
        stop = threading.Event()
        sink = KafkaSink(settings, stop=stop)
        sink.publish([sample_alert()], [])  # delivered while the broker is up
        doomed.stop()
        threading.Timer(3.0, stop.set).start()  # past the delivery timeout: sent again meanwhile
        try:
            with pytest.raises(DeliveryFailed):
                sink.publish([sample_alert()], [])
        finally:
            sink.close()


def test_secrets_never_show_in_settings_text() -> None:
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="posmon",
        sasl_password="hunter2-sasl",
        ssl_cafile="/etc/ca.pem",
        ssl_password="hunter2-key",
    )
    for text in (repr(settings), str(settings), settings.model_dump_json()):
        assert "hunter2" not in text
    config = client_config(settings, "producer")  # the client needs them in clear
    assert config["sasl_plain_password"] == "hunter2-sasl"
    assert config["ssl_password"] == "hunter2-key"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512" and config["ssl_cafile"] == "/etc/ca.pem"


@pytest.mark.parametrize(
    "fields",
    [
        {"security_protocol": "SASL_SSL"},  # no credentials
        {"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"},  # PLAINTEXT
        {"heartbeat_interval_ms": 10_000, "session_timeout_ms": 6_000},
        {"poll_timout_ms": 100},  # a typo is an error, not a default
    ],
)
def test_inconsistent_settings_are_refused(fields: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        KafkaSettings.model_validate(fields)


def test_client_config_per_role() -> None:
    settings = KafkaSettings(bootstrap_servers="a:9092, b:9092", idle_partition_s="2m")
    assert settings.idle_partition_s == 120
    consumer = client_config(settings, "consumer")
    assert consumer["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert consumer["enable_auto_commit"] is False and consumer["group_id"] == "posmon"
    producer = client_config(settings, "producer")
    assert producer["acks"] == "all" and producer["max_in_flight_requests_per_connection"] == 1
    assert "group_id" not in producer and "sasl_plain_password" not in producer


def test_produce_lines_keys_by_merchant_id(broker: EmbeddedBroker) -> None:
    topic = fresh_topic(broker, partitions=6)
    settings = kafka_settings(broker, topic)
    lines = [json.dumps({"merchant_id": f"M-{i % 4}", "n": i}).encode() for i in range(40)]
    odd = [b"not json", b"[1, 2]", b'{"merchant_id": 7}', b""]
    sent_from = time.time() * 1000 - 5000  # CreateTime, set by the producer (some slack)
    assert produce_lines(settings, topic, lines + odd) == 44
    sent_by = time.time() * 1000 + 5000

    records = read_topic(settings, topic)
    assert sorted(r.value for r in records) == sorted(lines + odd)
    assert all(sent_from < r.timestamp < sent_by for r in records)
    partition_of: dict[bytes | None, set[int]] = {}
    for record in records:
        assert record.key == merchant_key(record.value)
        partition_of.setdefault(record.key, set()).add(record.partition)
    assert {key for key in partition_of if key is not None} == {b"M-0", b"M-1", b"M-2", b"M-3"}
    assert all(len(partition_of[key]) == 1 for key in partition_of if key is not None)


def test_produce_lines_keeps_the_rate_on_its_clock(broker: EmbeddedBroker) -> None:
    topic = fresh_topic(broker, partitions=1)
    clock = FakeClock()
    lines = [b'{"merchant_id": "M-1"}'] * 50
    count = produce_lines(
        kafka_settings(broker, topic), topic, lines, rate=20, clock=clock, sleep=clock.sleep
    )
    assert count == 50
    assert len(clock.sleeps) == 49  # the first goes at once, every later one waits its turn
    assert sum(clock.sleeps) == pytest.approx(49 / 20)

    started = time.monotonic()
    produce_lines(kafka_settings(broker, topic), topic, lines[:11], rate=100)
    assert time.monotonic() - started >= 0.1 * 0.5  # never faster; slower only if the host is


def test_the_pacer_restarts_its_schedule_instead_of_bursting() -> None:
    clock = FakeClock()
    pacer = Pacer(10, clock=clock, sleep=clock.sleep)
    pacer.wait()
    pacer.wait()
    assert clock.sleeps == [pytest.approx(0.1)]
    clock.now += 5  # the caller stalled for 5 s
    for _ in range(3):
        pacer.wait()
    assert clock.sleeps[1:] == [pytest.approx(0.1), pytest.approx(0.1)]  # no burst of 50


def test_ensure_topics_creates_what_is_missing(broker: EmbeddedBroker) -> None:
    existing = fresh_topic(broker, partitions=2)
    settings = kafka_settings(broker, existing)
    new = f"{existing}-extra"
    assert ensure_topics(settings, {existing: 6, new: 4}) == [new]
    assert ensure_topics(settings, {new: 4}) == []
    assert broker.list_topics()[existing] == 2  # left as it was
    assert broker.list_topics()[new] == 4


def test_read_topic_of_an_empty_topic_is_empty(broker: EmbeddedBroker) -> None:
    topic = fresh_topic(broker, partitions=3)
    assert read_topic(kafka_settings(broker, topic), topic, timeout_s=5) == []


def test_rebuilding_is_true_from_the_assignment_until_the_committed_offsets_are_read(
    broker: EmbeddedBroker,
) -> None:
    """/readyz reads `rebuilding` from another thread: it must never see an assignment whose
    rebuild has not started yet as caught up (the flag is set by the rebalance itself)."""
    topic = fresh_topic(broker, partitions=2)
    settings = kafka_settings(broker, topic, max_poll_records=50)
    produce_to(settings, {0: [b"%d" % i for i in range(600)], 1: [b"%d" % i for i in range(400)]})
    first = KafkaSource(settings)
    try:
        for batch in poll_until(first, lambda b: sum(map(len, b)) == 1000):
            first.commit(batch)
    finally:
        first.close()

    second = KafkaSource(settings)
    samples: list[tuple[bool, bool]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            samples.append((bool(second.assignment()), second.rebuilding))
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        read = 0
        deadline = time.monotonic() + 30
        while read < 1000:
            assert time.monotonic() < deadline
            read += len(second.poll())
        done.set()
        sampler.join()
        assigned = [rebuilding for held, rebuilding in samples if held]
        assert assigned and all(assigned)  # every look before the rebuild ended said so
        assert second.covered() is None or not second.rebuilding
        second.poll()
        assert not second.rebuilding and second.covered() == {0: 600, 1: 400}
    finally:
        done.set()
        second.close()
