"""Restart cost: what a SIGKILL costs `posmon run`, against how much history the topic keeps.

    python bench/restart_bench.py [--small 15000] [--factor 16] [--runs 3] [--no-snapshots]

Prints figures, asserts nothing (tests/test_restarts.py asserts the ratio in `make soak`). For
a topic holding `--small` simulated events and one holding `--factor` times more, on the
embedded broker: `posmon run` (static membership, snapshots every 5 s) scores the history and
writes a snapshot; it is killed with SIGKILL and started again, and an event produced right
after the restart (a large amount, so it alerts on arrival) is timed from the restart to its
alert on the alerts topic. Median of `--runs` kills per topic, and the ratio of the medians.
With `--no-snapshots` the restart re-reads the whole topic, as posmon did before snapshots.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import committed_offsets, read_topic

REPO = Path(__file__).resolve().parent.parent
SESSION_MS = 6000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _probe(line: bytes) -> tuple[str, bytes]:
    """A large amount right after `line`'s time: it raises `large_amount` as soon as it is read."""
    last = datetime.fromisoformat(json.loads(line)["event_time"])
    ref = uuid.uuid4().hex[:12].upper()
    event = {
        "event_id": f"probe-{ref}",
        "event_time": (last + timedelta(seconds=1)).isoformat(),
        "kind": "auth_request",
        "terminal_id": "T-PROBE",
        "merchant_id": "M-PROBE",
        "card_id": f"tok_probe{ref.lower()}",
        "txn_ref": ref,
        "amount_minor": 5_000_000,
        "currency": "EUR",
    }
    return ref, json.dumps(event).encode()


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out waiting for {what}")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as reply:
            return bool(reply.status == 200)
    except OSError:
        return False


def _alerted(settings: KafkaSettings, ref: str) -> bool:
    records = read_topic(settings, settings.alerts_topic, timeout_s=30)
    return any(ref in (r.value or b"").decode() for r in records)


def measure(broker: EmbeddedBroker, lines: list[bytes], runs: int, snapshots: bool) -> list[float]:
    topic = f"restart-{uuid.uuid4().hex[:8]}"
    broker.create_topics({topic: 6, f"{topic}.dlq": 1, f"{topic}.alerts": 6})
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap_servers,
        topic=topic,
        alerts_topic=f"{topic}.alerts",
        group=f"{topic}-group",
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=1000,
    )
    produce_lines(settings, topic, lines, rate=None)
    port = _free_port()
    state = tempfile.mkdtemp(prefix="posmon-restart-")
    environ = {
        **os.environ,
        "POSMON_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers,
        "POSMON_KAFKA__TOPIC": topic,
        "POSMON_KAFKA__ALERTS_TOPIC": settings.alerts_topic,
        "POSMON_KAFKA__GROUP": settings.group,
        "POSMON_KAFKA__SESSION_TIMEOUT_MS": str(SESSION_MS),
        "POSMON_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "POSMON_KAFKA__GROUP_INSTANCE_ID": "posmon-bench-0",
        "POSMON_KAFKA__IDLE_PARTITION_S": "1",
        "POSMON_METRICS__HOST": "127.0.0.1",
        "POSMON_METRICS__PORT": str(port),
        "POSMON_RUN__READY_MAX_LAG": "0",
    }
    if snapshots:
        environ |= {"POSMON_RUN__SNAPSHOT_DIR": state, "POSMON_RUN__SNAPSHOT_EVERY": "5s"}

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "run"],
            cwd=REPO,
            env=environ,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    process = start()
    times: list[float] = []
    try:
        total = len(lines)
        _wait(lambda: sum(committed_offsets(settings).values()) >= total, 600, "the history")
        _wait(lambda: _ready(port), 120, "ready")
        for _ in range(runs):
            time.sleep(7)  # a snapshot after the last commit
            process.kill()
            process.wait()
            restarted = time.monotonic()
            process = start()
            ref, probe = _probe(lines[-1])
            produce_lines(settings, topic, [probe], rate=None)
            total += 1
            _wait(lambda r=ref: _alerted(settings, r), 600, "the probe's alert")
            times.append(time.monotonic() - restarted)
            _wait(lambda: _ready(port), 120, "ready")
            lines = [*lines, probe]
    finally:
        process.kill()
        process.wait()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=15_000)
    parser.add_argument("--factor", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-snapshots", action="store_true")
    args = parser.parse_args()
    big = args.small * args.factor
    hours = max(26.0, 80.0 * big / 245_000)
    every = list(
        islice(Simulation(SimulationSpec(seed=41, hours=hours, merchants=40)).lines(), big)
    )
    results: dict[int, float] = {}
    with EmbeddedBroker() as broker:
        for size in (args.small, big):
            history = every[:size]
            times = measure(broker, history, args.runs, not args.no_snapshots)
            results[size] = statistics.median(times)
            print(
                f"history {size:>9,} events: kill to the first alert on a new event,"
                f" median {results[size]:.1f} s ({', '.join(f'{t:.1f}' for t in times)})",
                flush=True,
            )
    print(f"ratio {results[big] / results[args.small]:.2f} for {args.factor}x the history")


if __name__ == "__main__":
    main()
