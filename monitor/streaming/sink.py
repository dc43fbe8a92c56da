"""Durable writes to Kafka: the scoring loop's alerts and dead letters, the dispatcher's ledger
records and parked alerts. Each publish returns only once the broker acknowledged every record.

A broker outage is waited out, never skipped: kafka-python retries a record until
`delivery_timeout_ms`, and a record it gave up on (a retriable error) is sent again, in order,
every `RETRY_EVERY_S`, with a warning naming the bootstrap servers, until the broker takes it.
Only a stop (`stop` set: SIGTERM) ends the wait, within a second, with `PublishInterrupted`:
the caller then commits nothing, so the records are published again after the restart. A
record the broker refuses for good (too large, not authorised) raises `DeliveryFailed`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.errors import KafkaError, KafkaTimeoutError  # type: ignore[import-untyped]

from monitor.core.alerts import Alert
from monitor.core.events import Rejection
from monitor.streaming.client import DeliveryFailed, PublishInterrupted, client_config
from monitor.streaming.settings import KafkaSettings

log = logging.getLogger("posmon.kafka")

RETRY_EVERY_S = 5.0
_WAIT_SLICE_S = 0.1  # how often a waiting publish looks at the stop event
# A stop lets a publish in hand finish if the broker acknowledges it within this (a graceful
# stop publishes and commits its last batch); past it, the broker counts as unreachable.
_STOP_GRACE_S = 0.25
# Closing waits for no record (each publish returned acknowledged, or interrupted: its records
# are dropped), only for kafka-python's own requests, which an unreachable broker holds up to
# `request_timeout_ms` (22 s measured after SIGTERM in a blackhole): not worth waiting for.
_CLOSE_TIMEOUT_S = 0.25

# topic, key, value (None: a tombstone), partition (None: the producer's partitioner picks)
Outgoing = tuple[str, bytes | None, bytes | None, int | None]


class KafkaSink:
    """Publishes alerts (key = alert_id) and dead letters to Kafka (a `pipeline.Sink`).

    Dead letters go to `dlq_topic` (default `<topic>.dlq`), keyed by the coordinates of the
    message they stand for, `<topic>/<partition>/<offset>` (also in their `source`): the same
    message re-read after a crash gives the same key, so a consumer (or compaction) drops the
    repeats. A rejection without coordinates goes unkeyed. Give that topic one partition to keep
    the dead letters in order.

    `publish` returns only when the broker acknowledged every record (`acks=all`), waiting out
    an outage (module docstring); it raises `PublishInterrupted` once `stop` is set, and
    `DeliveryFailed` for a record the broker refuses for good: the batch is then not committed.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        dlq_topic: str | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self.alerts_topic = settings.alerts_topic
        self.source_topic = settings.topic
        self.dlq_topic = dlq_topic or f"{settings.topic}.dlq"
        self.cards_topic = settings.cards_topic_name
        self._producer = _Producer(settings, stop)

    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[tuple[int, bytes | None, bytes]] = (),
    ) -> None:
        """The batch's alerts, dead letters and a merchant stage's records for the card stage
        (`kafka.cards_topic`, each on the partition it names), in that order."""
        if not alerts and not dead_letters and not handoffs:
            return
        records: list[Outgoing] = [
            (self.alerts_topic, a.alert_id.encode(), a.model_dump_json().encode(), None)
            for a in alerts
        ]
        for r in dead_letters:
            key, letter = kafka_dead_letter(self.source_topic, r)
            records.append((self.dlq_topic, key, json.dumps(letter).encode(), None))
        cards = self.cards_topic
        records.extend((cards, key, value, partition) for partition, key, value in handoffs)
        self._producer.deliver(records)

    @property
    def waiting_s(self) -> float:
        """How long the publish in hand has waited for the broker (0 when none is): a loop that
        does not turn because of it is waiting out an outage, not stuck (/healthz)."""
        since = self._producer.waiting_since
        return time.monotonic() - since if since is not None else 0.0

    def close(self) -> None:
        self._producer.close()


def kafka_dead_letter(topic: str, r: Rejection) -> tuple[bytes | None, dict[str, object]]:
    """The key and the dead letter of a rejected message read from `topic`."""
    if r.partition is None or r.offset is None:
        return None, r.as_dead_letter()
    source: dict[str, str | int] = {"topic": topic, "partition": r.partition, "offset": r.offset}
    return f"{topic}/{r.partition}/{r.offset}".encode(), r.as_dead_letter(source)


class KafkaOutbox:
    """The dispatcher's durable writes: ledger records (keyed `alert_id/channel`, later ones
    win, so the topic may be compacted) and parked alerts on the alerts dead-letter topic.
    Each call returns only when the broker acknowledged every record, waiting out an outage as
    `KafkaSink.publish` does."""

    def __init__(
        self,
        settings: KafkaSettings,
        *,
        ledger_topic: str,
        dlq_topic: str,
        stop: threading.Event | None = None,
    ) -> None:
        self._producer = _Producer(settings, stop)
        self.ledger_topic, self.dlq_topic = ledger_topic, dlq_topic

    def record(self, records: Sequence[dict[str, object]]) -> None:
        self._producer.deliver(
            [
                (
                    self.ledger_topic,
                    f"{r['alert_id']}/{r['channel']}".encode(),
                    json.dumps(r).encode(),
                    None,
                )
                for r in records
            ]
        )

    def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        """Tombstones for ledger entries past their retention (compaction drops them)."""
        self._producer.deliver(
            [
                (self.ledger_topic, f"{alert_id}/{channel}".encode(), None, None)
                for alert_id, channel in keys
            ]
        )

    def park(self, parked: Sequence[dict[str, object]]) -> None:
        self._producer.deliver(
            [(self.dlq_topic, None, json.dumps(p).encode(), None) for p in parked]
        )

    def close(self) -> None:
        self._producer.close()


class _Producer:
    """A `KafkaProducer` whose `deliver` returns once the broker acknowledged every record, and
    sends again what kafka-python gave up on (module docstring)."""

    def __init__(self, settings: KafkaSettings, stop: threading.Event | None) -> None:
        self._producer = KafkaProducer(**client_config(settings, "producer"))
        self._stop = stop
        self._servers = settings.bootstrap_servers
        self._interrupted = False
        self.waiting_since: float | None = None  # monotonic start of a `deliver` in progress

    def deliver(self, records: Sequence[Outgoing]) -> None:
        self.waiting_since = time.monotonic()
        try:
            self._deliver(records)
        finally:
            self.waiting_since = None

    def _deliver(self, records: Sequence[Outgoing]) -> None:
        pending, since = list(records), time.monotonic()
        while pending:
            futures, error = self._send(pending)
            self._await(futures, since)
            failed = [
                (r, f.exception) for r, f in zip(pending, futures, strict=False) if f.failed()
            ]
            for _, exc in failed:
                if not _retriable(exc):
                    raise DeliveryFailed(f"the broker refused a record: {exc}")
            pending = [r for r, _ in failed] + list(pending[len(futures) :])  # in their order
            if pending:
                log.warning(
                    "%d of %d records not acknowledged by the Kafka broker at %s (%s);"
                    " sending them again in %g s",
                    len(pending),
                    len(records),
                    self._servers,
                    failed[0][1] if failed else error,
                    RETRY_EVERY_S,
                )
                self._pause(RETRY_EVERY_S)

    def _send(self, pending: Sequence[Outgoing]) -> tuple[list[Any], KafkaError | None]:
        """Hand the records to kafka-python; a send that blocked `max_block_ms` (no metadata,
        buffer full) leaves the rest unsent."""
        futures = []
        try:
            for topic, key, value, partition in pending:
                futures.append(
                    self._producer.send(topic, key=key, value=value, partition=partition)
                )
        except KafkaError as exc:
            if not _retriable(exc):
                raise DeliveryFailed(f"the broker refused a record: {exc}") from exc
            return futures, exc
        return futures, None

    def _await(self, futures: Sequence[Any], since: float) -> None:
        """Until every future is done (acknowledged, or given up after `delivery_timeout_ms`),
        with a warning every `RETRY_EVERY_S`."""
        warn_at = time.monotonic() + RETRY_EVERY_S
        stopped_at: float | None = None
        while waiting := sum(not f.is_done for f in futures):
            now = time.monotonic()
            if now >= warn_at:
                warn_at += RETRY_EVERY_S
                log.warning(
                    "%d records waiting %.0f s for the Kafka broker at %s to acknowledge them",
                    waiting,
                    now - since,
                    self._servers,
                )
            if self._stop is not None and self._stop.is_set():
                stopped_at = stopped_at or now
                if now - stopped_at >= _STOP_GRACE_S:
                    self._interrupt()
            with contextlib.suppress(KafkaTimeoutError):  # not all done yet: look at `stop`
                self._producer.flush(timeout=_WAIT_SLICE_S)

    def _pause(self, seconds: float) -> None:
        if self._stop is None:
            time.sleep(seconds)
        elif self._stop.wait(seconds):
            self._interrupt()

    def _interrupt(self) -> None:
        self._interrupted = True
        raise PublishInterrupted(f"stopped while waiting for the Kafka broker at {self._servers}")

    def close(self) -> None:
        """Close the producer. After an interrupted publish its records are dropped, not waited
        for: nothing after them was committed, so they are published again after the restart."""
        if self._interrupted:
            # kafka-python's close() flushes first and raises while records are pending; its
            # sender's force_close fails them at once (the producer has no public way to).
            self._producer._sender.force_close()
        self._producer.close(timeout=_CLOSE_TIMEOUT_S)


def _retriable(exc: BaseException | None) -> bool:
    return isinstance(exc, KafkaError) and bool(exc.retriable)
