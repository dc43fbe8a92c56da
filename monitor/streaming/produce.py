"""Producing lines of events to a topic at a steady rate (`posmon simulate --topic`, the demo)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable

from kafka import KafkaProducer  # type: ignore[import-untyped]
from kafka.errors import KafkaError  # type: ignore[import-untyped]

from monitor.streaming.client import DeliveryFailed, client_config
from monitor.streaming.settings import KafkaSettings

Clock = Callable[[], float]


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
