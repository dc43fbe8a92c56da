"""An unreachable or blackholed broker: `posmon run` and `posmon dispatch` wait, report, stop on
SIGTERM at once, give up after `kafka.startup_timeout`, and ride out an outage while running.

- Start-up against a port where nothing listens: a retry line naming the bootstrap servers,
  /healthz 200 and /readyz 503 meanwhile, SIGTERM honoured within a second (measured), and with
  a short `kafka.startup_timeout` exit status 2 with one line, no traceback.
- A publish through a blackhole (`tests.broker.BlackholeProxy`: connections kept, bytes
  dropped) is sent again until the broker takes it, and a stop interrupts it at once.
- A monitor cut off from its broker for 30 s (120 s in `make soak`) in the middle of a publish,
  while events keep arriving, says "not ready" during the outage, sends the publish again until
  the broker takes it, resumes by itself, and ends with exactly the replay's alerts and dead
  letters.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from monitor.core.alerts import Alert
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.client import PublishInterrupted
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.sink import KafkaSink
from monitor.streaming.topics import committed_offsets, read_topic
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ, proxied_broker
from tests.builders import final_states
from tests.test_kafka import sample_alert

REPO = Path(__file__).resolve().parent.parent
SPEC = SimulationSpec(seed=21, hours=3.0, merchants=20)
FEEDER = "feeder"  # the test's own clients: the proxy never blackholes them
DISPATCH_CONFIG = """
dispatch:
  channels:
    audit: {type: file, path: %s}
  routes:
    - name: all
      channels: [audit]
  default_route: {channels: [audit]}
"""


class Process:
    """A `posmon` subprocess whose stderr lines are collected as they come."""

    def __init__(self, args: list[str], environ: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "monitor", *args],
            cwd=REPO,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        assert self.popen.stderr is not None
        self._reader = threading.Thread(target=self._read, args=(self.popen.stderr,))
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if text in line]
            if found:
                return found[0]
            if self.popen.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"no line with {text!r} on stderr: {self.lines}")

    def finish(self, timeout: float) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.finish(10)


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


def _probe(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as reply:
            return int(reply.status), reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _up(port: int) -> bool:
    try:
        _probe(port, "healthz")
    except OSError:
        return False
    return True


def _wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _unreachable_environ(port: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens
    config = tmp_path / "dispatch.yaml"
    config.write_text(DISPATCH_CONFIG % (tmp_path / "notifications.jsonl"))
    return monitor_environ(settings, port, POSMON_CONFIG=str(config), **extra)


# -- start-up ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "dispatch"])
def test_an_unreachable_broker_is_waited_for_and_sigterm_stops_at_once(
    command: str, tmp_path: Path, processes: list[Process]
) -> None:
    port = free_port()
    environ = _unreachable_environ(port, tmp_path)
    servers = environ["POSMON_KAFKA__BOOTSTRAP_SERVERS"]
    process = Process([command], environ)
    processes.append(process)
    line = process.wait_for_line("not reachable", timeout=30)
    assert servers in line and "retrying every 5 s" in line
    _wait_for(lambda: _up(port), 10, "the probes")
    health, _ = _probe(port, "healthz")
    ready, text = _probe(port, "readyz")
    assert health == 200  # only waiting: the process is fine, a liveness probe must not kill it
    assert ready == 503, text
    if command == "run":
        assert servers in text
    time.sleep(1.0)  # SIGTERM between two attempts, while the probe's retry timer runs
    sent = time.monotonic()
    process.popen.send_signal(signal.SIGTERM)
    code = process.finish(timeout=10)
    took = time.monotonic() - sent
    print(f"posmon {command}: SIGTERM while waiting for the broker, exited in {took:.2f} s")
    assert code == 0, process.lines
    assert took < 1.0, f"posmon {command} took {took:.2f} s to stop after SIGTERM"
    assert not any("Traceback" in line for line in process.lines)


@pytest.mark.parametrize("command", ["run", "dispatch"])
def test_no_broker_within_the_startup_timeout_is_exit_2_with_one_line(
    command: str, tmp_path: Path, processes: list[Process]
) -> None:
    environ = _unreachable_environ(free_port(), tmp_path, POSMON_KAFKA__STARTUP_TIMEOUT="3s")
    process = Process([command], environ)
    processes.append(process)
    code = process.finish(timeout=30)
    assert code == 2, process.lines
    assert not any("Traceback" in line for line in process.lines), process.lines
    errors = [line for line in process.lines if line.startswith("posmon: error:")]
    assert errors == [process.lines[-1]], process.lines  # one line, the last
    assert environ["POSMON_KAFKA__BOOTSTRAP_SERVERS"] in errors[0]
    assert "within 3 s (kafka.startup_timeout)" in errors[0]


def test_a_blackholed_broker_at_start_up_times_out_each_probe_and_sigterm_stops_at_once(
    tmp_path: Path, processes: list[Process]
) -> None:
    """Connections are accepted but never answered: each probe times out (the retry line says
    so), a SIGTERM during a hanging probe stops `posmon run` at once, the timeout is exit 2."""
    with proxied_broker() as (_, proxy):
        proxy.blackhole()
        port = free_port()
        environ = _unreachable_environ(port, tmp_path)
        environ["POSMON_KAFKA__BOOTSTRAP_SERVERS"] = proxy.bootstrap_servers
        process = Process(["run"], environ)
        processes.append(process)
        line = process.wait_for_line("not reachable", timeout=30)
        assert f"{proxy.bootstrap_servers}: timed out" in line
        time.sleep(0.5)  # the next probe hangs on the blackhole now
        sent = time.monotonic()
        process.popen.send_signal(signal.SIGTERM)
        assert process.finish(timeout=10) == 0, process.lines
        took = time.monotonic() - sent
        print(f"posmon run: SIGTERM during a probe of a blackholed broker, exited in {took:.2f} s")
        assert took < 1.0, f"posmon run took {took:.2f} s to stop after SIGTERM"

        environ["POSMON_KAFKA__STARTUP_TIMEOUT"] = "3s"
        process = Process(["run"], environ)
        processes.append(process)
        assert process.finish(timeout=30) == 2, process.lines
        assert process.lines[-1].startswith("posmon: error: no Kafka broker answered at")
        assert process.lines[-1].endswith(f"{proxy.bootstrap_servers}: timed out")


# -- a publish through a blackhole ------------------------------------------------------------


def test_a_publish_waits_out_a_blackhole_and_a_stop_interrupts_it_at_once() -> None:
    with proxied_broker() as (broker, proxy):
        broker.create_topics({"ev.alerts": 1, "ev.dlq": 1})
        settings = KafkaSettings(
            bootstrap_servers=proxy.bootstrap_servers,
            topic="ev",
            alerts_topic="ev.alerts",
            request_timeout_ms=1000,
            delivery_timeout_ms=2000,  # kafka-python gives the records up during the outage
            max_block_ms=1000,
        )
        stop = threading.Event()
        sink = KafkaSink(settings, stop=stop)
        outcome: list[str] = []

        def publish() -> None:
            try:
                sink.publish([sample_alert()], [])
                outcome.append("published")
            except PublishInterrupted:
                outcome.append("interrupted")

        try:
            sink.publish([sample_alert()], [])
            proxy.blackhole()
            publishing = threading.Thread(target=publish, daemon=True)
            publishing.start()
            publishing.join(8.0)  # four times the delivery timeout: given up, sent again
            assert outcome == []
            proxy.restore()
            publishing.join(30.0)
            assert outcome == ["published"]
            assert len(read_topic(settings, "ev.alerts")) == 2  # both, the second once

            proxy.blackhole()
            publishing = threading.Thread(target=publish, daemon=True)
            publishing.start()
            publishing.join(1.5)  # its records are pending in the producer
            sent = time.monotonic()
            stop.set()
            publishing.join(5.0)
            took = time.monotonic() - sent
            assert outcome == ["published", "interrupted"]
            assert took < 1.0, f"the publish took {took:.2f} s to notice the stop"
            proxy.restore()  # stopping with the broker there: the last batch still goes out
            sink.publish([sample_alert()], [])
        finally:
            stop.set()  # a failed check leaves no publish waiting
            started = time.monotonic()
            sink.close()  # drops the interrupted records at once, raises nothing
            assert time.monotonic() - started < 1.0
            proxy.restore()


# -- a monitor cut off from its broker ----------------------------------------------------------


def test_a_30_s_blackhole_is_ridden_out_with_the_replays_alerts() -> None:
    _ride_out(outage_s=30.0)


@pytest.mark.soak
def test_a_120_s_blackhole_is_ridden_out_with_the_replays_alerts() -> None:
    _ride_out(outage_s=120.0)


def _ride_out(outage_s: float) -> None:
    lines = list(Simulation(SPEC).lines())
    sink, _ = replay_messages(lines, Scorer(Policy()))
    expected_letters = Counter((r.reason, r.as_dead_letter()["raw"]) for r in sink.dead_letters)
    with proxied_broker(spare=[FEEDER]) as (broker, proxy):
        topic = fresh_topic(broker)
        settings = kafka_settings(
            broker, topic, bootstrap_servers=proxy.bootstrap_servers, idle_partition_s=1.0
        )
        feeder = settings.model_copy(update={"client_id": FEEDER})
        port = free_port()
        environ = monitor_environ(
            settings,
            port,
            POSMON_RUN__READY_MAX_LAG="0",
            # Short client timeouts: the outage outlasts them, so kafka-python's reconnects and
            # the sink's own re-sends (after `delivery_timeout_ms`) both happen in it.
            POSMON_KAFKA__REQUEST_TIMEOUT_MS="3000",
            POSMON_KAFKA__DELIVERY_TIMEOUT_MS="6000",
        )
        monitor = Process(["run"], environ)
        try:
            producing = threading.Thread(
                target=produce_lines,
                args=(feeder, topic, lines),
                kwargs={"rate": len(lines) / (outage_s + 20)},  # through the whole outage
                daemon=True,
            )
            _wait_for(lambda: _probe_ok(port, "readyz"), 60, "/readyz before the outage")
            producing.start()
            _wait_for(lambda: _committed(feeder) >= len(lines) // 8, 60, "an eighth committed")

            proxy.blackhole(at_produce=True)  # at the monitor's next publish: it is caught in it
            _wait_for(lambda: proxy.dark_since is not None, 60, "a publish to cut off")
            assert proxy.dark_since is not None
            cut = proxy.dark_since
            _wait_for(lambda: not _probe_ok(port, "readyz"), 15, "/readyz 503 in the outage")
            noticed = time.monotonic() - cut
            status, text = _probe(port, "readyz")
            assert status == 503 and "not answering" in text, text
            while time.monotonic() - cut < outage_s:
                assert _probe(port, "readyz")[0] == 503, "ready while cut off from the broker"
                time.sleep(1.0)
            committed_in_outage = _committed(feeder)
            proxy.restore()
            back = time.monotonic()

            producing.join()
            _wait_for(lambda: _committed(feeder) >= len(lines), 120, "the whole topic committed")
            _wait_for(lambda: _probe_ok(port, "readyz"), 60, "/readyz after the outage")
            recovered = time.monotonic() - back
            time.sleep(3 * settings.idle_partition_s + 1)  # the idle stream takes due decisions
            monitor.popen.send_signal(signal.SIGTERM)
            assert monitor.finish(timeout=60) == 0, monitor.lines
        finally:
            monitor.kill()
            print("\n".join(monitor.lines))  # shown when the test fails
        published = [
            Alert.model_validate_json(r.value)
            for r in read_topic(feeder, settings.alerts_topic, timeout_s=30)
        ]
        letters = [json.loads(r.value) for r in read_topic(feeder, f"{topic}.dlq", timeout_s=30)]

    final = final_states(published)
    assert final == final_states(sink.alerts)
    versions = Counter((a.alert_id, a.model_dump_json()) for a in published)
    repeated = sum(n - 1 for n in versions.values())
    by_message = {(d["reason"], d["raw"], json.dumps(d.get("source"))): d for d in letters}
    assert Counter((d["reason"], d["raw"]) for d in by_message.values()) == expected_letters
    print(
        f"{outage_s:.0f} s blackhole: /readyz 503 after {noticed:.1f} s, caught up"
        f" {recovered:.1f} s after it ended; {committed_in_outage} of {len(lines)} events"
        f" committed by its end; {len(published)} alert records for {len(final)} alerts"
        f" ({repeated} repeated versions); {len(letters)} dead letters for"
        f" {sum(expected_letters.values())} rejected lines"
    )
    assert not any("Traceback" in line for line in monitor.lines), monitor.lines
    assert any("sending them again" in line for line in monitor.lines), monitor.lines


def _probe_ok(port: int, path: str) -> bool:
    try:
        return _probe(port, path)[0] == 200
    except OSError:
        return False


def _committed(settings: KafkaSettings) -> int:
    return sum(committed_offsets(settings).values())


@pytest.mark.parametrize("caught_in", ["publish", "poll"])
def test_sigterm_in_an_outage_stops_at_once_and_a_restart_loses_nothing(caught_in: str) -> None:
    """SIGTERM while the monitor is cut off, waiting in a publish or polling in vain: it stops
    within about a second, committing nothing it has not published; restarted after the
    outage, it ends with the replay's alerts."""
    lines = list(Simulation(SPEC).lines())
    sink, _ = replay_messages(lines, Scorer(Policy()))
    with proxied_broker(spare=[FEEDER]) as (broker, proxy):
        topic = fresh_topic(broker)
        settings = kafka_settings(
            broker, topic, bootstrap_servers=proxy.bootstrap_servers, idle_partition_s=1.0
        )
        feeder = settings.model_copy(update={"client_id": FEEDER})
        port = free_port()
        environ = monitor_environ(settings, port, POSMON_RUN__READY_MAX_LAG="0")
        monitor = Process(["run"], environ)
        try:
            if caught_in == "publish":  # the monitor's first publish is caught
                assert produce_lines(feeder, topic, lines) == len(lines)
                proxy.blackhole(at_produce=True)
                _wait_for(lambda: proxy.dark_since is not None, 60, "a publish to cut off")
                monitor.wait_for_line("records waiting", timeout=30)
            else:  # the monitor has published half of the events, then it is cut off
                half = len(lines) // 2
                assert produce_lines(feeder, topic, lines[:half]) == half
                _wait_for(lambda: _committed(feeder) >= half, 60, "the first half committed")
                proxy.blackhole()
                assert produce_lines(feeder, topic, lines[half:]) == len(lines) - half
                _wait_for(lambda: not _probe_ok(port, "readyz"), 15, "/readyz 503")
            sent = time.monotonic()
            monitor.popen.send_signal(signal.SIGTERM)
            code = monitor.finish(timeout=30)
            took = time.monotonic() - sent
            assert code == 0, monitor.lines
            assert _committed(feeder) < len(lines)  # not all read: the rest waits on the topic
            proxy.restore()
            monitor = Process(["run"], environ)
            _wait_for(lambda: _committed(feeder) >= len(lines), 120, "the whole topic committed")
            _wait_for(lambda: _probe_ok(port, "readyz"), 60, "/readyz")
            time.sleep(3 * settings.idle_partition_s + 1)  # the idle stream takes due decisions
            monitor.popen.send_signal(signal.SIGTERM)
            assert monitor.finish(timeout=60) == 0, monitor.lines
        finally:
            monitor.kill()
            print("\n".join(monitor.lines))  # shown when the test fails
        records = read_topic(feeder, settings.alerts_topic, timeout_s=30)
    print(f"SIGTERM in a blackhole, caught in a {caught_in}: exited in {took:.2f} s")
    assert took < 2.0, f"{took:.2f} s from SIGTERM to exit in an outage"
    final = final_states(Alert.model_validate_json(r.value) for r in records)
    assert final == final_states(sink.alerts)
