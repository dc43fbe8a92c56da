"""Durable writes to Kafka: the scoring loop's alerts and dead letters, the dispatcher's ledger
records and parked alerts. Each publish returns only once the broker acknowledged every record."""

from __future__ import annotations

import json
from collections.abc import Sequence

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from monitor.core.alerts import Alert
from monitor.core.events import Rejection
from monitor.streaming.client import DeliveryFailed, check_acknowledged, client_config
from monitor.streaming.settings import KafkaSettings


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
        check_acknowledged(futures)

    def close(self) -> None:
        """Close the producer; anything unsent has expired by `delivery_timeout_ms` anyway."""
        self._producer.close(timeout=self._close_timeout_s)


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
        check_acknowledged(futures)

    def forget(self, keys: Sequence[tuple[str, str]]) -> None:
        """Tombstones for ledger entries past their retention (compaction drops them)."""
        futures = [
            self._producer.send(self.ledger_topic, key=f"{alert_id}/{channel}".encode(), value=None)
            for alert_id, channel in keys
        ]
        self._producer.flush()
        check_acknowledged(futures)

    def park(self, parked: Sequence[dict[str, object]]) -> None:
        futures = [
            self._producer.send(self.dlq_topic, value=json.dumps(p).encode()) for p in parked
        ]
        self._producer.flush()
        check_acknowledged(futures)

    def close(self) -> None:
        self._producer.close()
