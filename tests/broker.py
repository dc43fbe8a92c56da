"""The real broker for the tests: one embedded Tansu per session, a fresh topic per test.

Load it as a plugin (`pytest_plugins = ["tests.broker"]` in tests/conftest.py), then ask for the
`broker` fixture and call `fresh_topic(broker)` and `kafka_settings(broker, topic)`.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.settings import KafkaSettings

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


def monitor_environ(settings: KafkaSettings, metrics_port: int, **extra: str) -> dict[str, str]:
    """The environment of a `posmon run` (or `dispatch`) process for `settings`: test timings,
    an idle rule of one second, `/metrics` on `metrics_port` of the loopback."""
    return {
        **os.environ,
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "POSMON_KAFKA__TOPIC": settings.topic,
        "POSMON_KAFKA__GROUP": settings.group,
        "POSMON_KAFKA__ALERTS_TOPIC": settings.alerts_topic,
        "POSMON_KAFKA__SESSION_TIMEOUT_MS": str(TEST_TIMINGS["session_timeout_ms"]),
        "POSMON_KAFKA__HEARTBEAT_INTERVAL_MS": str(TEST_TIMINGS["heartbeat_interval_ms"]),
        "POSMON_KAFKA__IDLE_PARTITION_S": "1",
        "POSMON_METRICS__HOST": "127.0.0.1",
        "POSMON_METRICS__PORT": str(metrics_port),
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
