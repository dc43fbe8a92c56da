"""`posmon run` against the real (embedded) broker: the stream gives what the replay gives.

Simulated traffic is produced to a 6-partition topic keyed by merchant; `posmon run` runs as a
real process. The set of alert ids on the alerts topic must equal what `posmon replay` gives for
the same events, rejects must land on the DLQ topic with their reasons, a SIGKILL at any point
followed by a restart must miss nothing, and a SIGTERM must stop cleanly after committing.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import committed_offsets, read_topic
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ, wait_for

REPO = Path(__file__).resolve().parent.parent
SPEC = SimulationSpec(seed=21, hours=3.0, merchants=20)


@dataclass(frozen=True)
class Expected:
    lines: list[bytes]
    alert_ids: frozenset[str]
    reject_reasons: Counter[str]


@pytest.fixture(scope="module")
def expected() -> Expected:
    lines = list(Simulation(SPEC).lines())
    sink, _ = replay_messages(lines, Scorer(Policy()))
    assert len(sink.final_alerts()) > 10
    return Expected(
        lines, frozenset(sink.final_alerts()), Counter(r.reason for r in sink.dead_letters)
    )


@dataclass
class Stream:
    settings: KafkaSettings
    environ: dict[str, str]
    port: int


@pytest.fixture
def stream(broker: EmbeddedBroker, expected: Expected) -> Stream:
    """A fresh 6-partition topic holding the simulated events, and the settings to consume it."""
    return _stream(broker, lines=expected.lines)


def _stream(broker: EmbeddedBroker, *, lines: list[bytes] | None = None) -> Stream:
    topic = fresh_topic(broker, partitions=6)
    settings = kafka_settings(broker, topic, idle_partition_s=1.0)
    if lines is not None:
        assert produce_lines(settings, topic, lines, rate=None) == len(lines)
    port = free_port()
    environ = monitor_environ(settings, port, POSMON_RUN__READY_MAX_LAG="0")
    return Stream(settings, environ, port)


def _start(stream: Stream) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "run"],
        cwd=REPO,
        env=stream.environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _alert_ids(stream: Stream) -> list[str]:
    records = read_topic(stream.settings, stream.settings.alerts_topic)
    return [json.loads(r.value or b"{}")["alert_id"] for r in records]


def _wait_for(condition: Any, timeout: float, what: str) -> None:
    wait_for(condition, timeout, what, every=0.5)


def _up(stream: Stream, probe: str = "healthz") -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stream.port}/{probe}", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:  # refused while starting, HTTPError 503 while not ready
        return False


def _committed(stream: Stream) -> int:
    return sum(committed_offsets(stream.settings).values())


def _caught_up(stream: Stream, expected: Expected) -> bool:
    """Every message committed by the group: the monitor has scored the whole topic."""
    return _committed(stream) >= len(expected.lines)


def _finish(stream: Stream, expected: Expected, process: subprocess.Popen[str]) -> str:
    """Wait until the monitor has committed everything and its idle stream took the due
    decisions, then stop it gracefully; returns its output."""
    _wait_for(lambda: _up(stream, "readyz"), 90, "/readyz: state rebuilt and no lag left")
    _wait_for(lambda: _caught_up(stream, expected), 90, "the whole topic committed")
    time.sleep(3 * stream.settings.idle_partition_s + 1)
    return _stop(stream, process)


def _stop(stream: Stream, process: subprocess.Popen[str], signum: int = signal.SIGTERM) -> str:
    _wait_for(lambda: _up(stream), 30, "the monitor's /healthz")
    process.send_signal(signum)
    output, _ = process.communicate(timeout=30)
    return output


def test_stream_equals_replay(
    stream: Stream, expected: Expected, processes: list[subprocess.Popen[str]]
) -> None:
    process = _start(stream)
    processes.append(process)
    output = _finish(stream, expected, process)
    assert process.returncode == 0, output
    assert set(_alert_ids(stream)) == expected.alert_ids
    dlq = read_topic(stream.settings, f"{stream.settings.topic}.dlq")
    dead = [json.loads(r.value or b"{}") for r in dlq]
    assert Counter(d["reason"] for d in dead) == expected.reject_reasons
    assert all(set(d) == {"reason", "error", "raw", "source"} for d in dead)


def test_sigkill_at_any_point_then_restart_misses_no_alert(
    broker: EmbeddedBroker, expected: Expected, processes: list[subprocess.Popen[str]]
) -> None:
    """Traffic arrives while the monitor runs; it is killed hard three times mid-stream (state
    spanning each kill must be rebuilt) and restarted; at the end every id is there."""
    stream = _stream(broker)
    producer = threading.Thread(
        target=produce_lines,
        args=(stream.settings, stream.settings.topic, expected.lines),
        kwargs={"rate": len(expected.lines) / 8},
    )
    process = _start(stream)
    processes.append(process)
    _wait_for(lambda: _up(stream), 30, "the monitor's /healthz")
    producer.start()
    for fraction in (0.25, 0.5, 0.75):
        _wait_for(
            lambda f=fraction: _committed(stream) >= f * len(expected.lines),
            60,
            f"{fraction:.0%} committed",
        )
        process.kill()
        process.wait()
        process = _start(stream)
        processes.append(process)
    producer.join()
    output = _finish(stream, expected, process)
    assert process.returncode == 0, output
    ids = _alert_ids(stream)
    assert set(ids) == expected.alert_ids  # duplicates of an id are allowed, missing ids are not


def test_sigterm_finishes_the_batch_commits_and_stops(
    stream: Stream, expected: Expected, processes: list[subprocess.Popen[str]]
) -> None:
    process = _start(stream)
    processes.append(process)
    _wait_for(lambda: len(_alert_ids(stream)) >= 3, 90, "the first alerts")
    started = time.monotonic()
    output = _stop(stream, process, signal.SIGTERM)
    assert process.returncode == 0, output
    assert time.monotonic() - started < 15
    assert "stopped:" in output
    committed = committed_offsets(stream.settings)
    assert sum(committed.values()) > 0  # the stop committed what it had scored
    # A restart (state rebuilt from the topic) completes the set: nothing was lost.
    process = _start(stream)
    processes.append(process)
    _finish(stream, expected, process)
    assert set(_alert_ids(stream)) == expected.alert_ids
