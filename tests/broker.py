"""The real broker for the tests: one embedded Tansu per session, a fresh topic per test.

Load it as a plugin (`pytest_plugins = ["tests.broker"]` in tests/conftest.py), then ask for the
`broker` fixture and call `fresh_topic(broker)` and `kafka_settings(broker, topic)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.embedded import EmbeddedBroker
from monitor.kafka import KafkaSettings

Broker = EmbeddedBroker  # the fixture's type, for annotations

# A group join on Tansu takes about half the session timeout: keep it short, keep joins few.
TEST_TIMINGS: dict[str, Any] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A started embedded broker shared by the whole session (it starts in well under 1 s)."""
    with EmbeddedBroker() as started:
        yield started


def fresh_topic(broker: EmbeddedBroker, partitions: int = 6) -> str:
    """A new uniquely named topic, with its `<name>.dlq` (1 partition, so dead letters keep their
    order) and `<name>.alerts` (`partitions` partitions, keyed by alert id)."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    broker.create_topics({name: partitions, f"{name}.dlq": 1, f"{name}.alerts": partitions})
    return name


def kafka_settings(broker: EmbeddedBroker, topic: str, **overrides: Any) -> KafkaSettings:
    """Settings for `topic` on `broker`: its alerts topic, a group of its own, test timings."""
    values: dict[str, Any] = {
        "bootstrap_servers": broker.bootstrap_servers,
        "topic": topic,
        "alerts_topic": f"{topic}.alerts",
        "group": f"{topic}-group",
        **TEST_TIMINGS,
        **overrides,
    }
    return KafkaSettings(**values)
