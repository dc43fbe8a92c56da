"""Exact restarts under live traffic: `posmon run` killed with SIGKILL at random moments while
events keep arriving ends with exactly the alerts a replay of the same events finds.

A held-out simulated day (seed 33, not the one the detectors were tuned on) is produced to a
6-partition topic at a steady rate; the monitor is killed hard at random moments (during start-up,
state rebuild, catch-up and live scoring alike) and restarted each time. At the end:

- every alert id ever published on the alerts topic is one the replay finds (no extra alert, not
  even for a moment), and each id's last version equals the replay's final version;
- every malformed line is on the dead-letter topic, exactly once after deduplicating by its
  source coordinates;
- the recovery times (kill to ready) are printed.

CI runs 10 kills; `make soak` runs 100.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from monitor.cli.anomaly import DEFAULT_MODEL
from monitor.core.alerts import Alert
from monitor.scoring.model import ModelSlot, load_model
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import produce_lines
from monitor.streaming.topics import read_topic
from tests.builders import final_states
from tests.test_stream import Stream, _committed, _start, _stream, _up, _wait_for

SPEC = SimulationSpec(seed=33, hours=26.0, merchants=20)


@dataclass(frozen=True)
class Truth:
    lines: list[bytes]
    final: dict[str, Alert]
    reject_reasons: Counter[str]


@pytest.fixture(scope="module")
def truth() -> Truth:
    lines = list(Simulation(SPEC).lines())
    # The shipped anomaly model scores both: its alerts must survive the kills exactly too.
    model = ModelSlot(live=load_model(DEFAULT_MODEL))
    sink, _ = replay_messages(lines, Scorer(Policy(), model))
    return Truth(lines, final_states(sink.alerts), Counter(r.reason for r in sink.dead_letters))


def _published(stream: Stream) -> list[Alert]:
    records = read_topic(stream.settings, stream.settings.alerts_topic, timeout_s=30)
    return [Alert.model_validate_json(r.value) for r in records]


def _dead_letters(stream: Stream) -> list[dict[str, object]]:
    records = read_topic(stream.settings, f"{stream.settings.topic}.dlq", timeout_s=30)
    return [json.loads(r.value) for r in records]


def _killed_and_restarted(
    broker: EmbeddedBroker, truth: Truth, kills: int, rate: float, snapshots: Path
) -> None:
    stream = _stream(broker)
    stream.environ |= {
        "POSMON_RUN__SNAPSHOT_DIR": str(snapshots),
        "POSMON_RUN__SNAPSHOT_EVERY": "3s",
        "POSMON_KAFKA__GROUP_INSTANCE_ID": "posmon-test-0",
    }
    rng = random.Random(kills)
    window = len(truth.lines) / rate
    moments = sorted(rng.uniform(0.5, window) for _ in range(kills))
    producer = threading.Thread(
        target=produce_lines,
        args=(stream.settings, stream.settings.topic, truth.lines),
        kwargs={"rate": rate},
    )
    process = _start(stream)
    running: list[subprocess.Popen[str]] = [process]
    recoveries: list[float] = []
    try:
        _wait_for(lambda: _up(stream), 30, "the monitor's /healthz")
        started = time.monotonic()
        producer.start()
        for moment in moments:
            time.sleep(max(0.0, started + moment - time.monotonic()))
            process.kill()
            process.wait()
            killed = time.monotonic()
            process = _start(stream)
            running.append(process)
            if moment == moments[-1] or rng.random() < 0.5:  # half the time, let it recover first
                _wait_for(lambda: _up(stream, "readyz"), 120, "/readyz after a restart")
                recoveries.append(time.monotonic() - killed)
        producer.join()
        _wait_for(lambda: _committed(stream) >= len(truth.lines), 180, "the whole topic committed")
        _wait_for(lambda: _up(stream, "readyz"), 120, "/readyz at the end")
        time.sleep(3 * stream.settings.idle_partition_s + 2)  # idle: the due decisions are taken
        process.terminate()
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
    finally:
        for p in running:
            if p.poll() is None:
                p.kill()
                p.wait()
        if os.environ.get("RESTART_TEST_LOGS"):
            for p in running:
                print("-----", p.pid)
                text = p.stdout.read() if p.stdout and not p.stdout.closed else ""
                print("\n".join(x for x in text.splitlines() if "posmon" in x))

    published = _published(stream)
    extra = {a.alert_id: a.summary for a in published if a.alert_id not in truth.final}
    assert not extra, f"alerts a replay does not raise were published: {extra}"
    last = final_states(published)
    missing = sorted(truth.final[i].summary for i in truth.final.keys() - last.keys())
    assert not missing, f"alerts never published: {missing}"
    differ = [i for i, a in truth.final.items() if last[i] != a]
    assert not differ, f"final versions differ: {[(last[i], truth.final[i]) for i in differ]}"

    dead = _dead_letters(stream)
    once = {json.dumps(d.get("source"), sort_keys=True): d["reason"] for d in dead}
    assert Counter(once.values()) == truth.reject_reasons
    print(
        f"\n{kills} kills: {len(published)} alert records for {len(truth.final)} alerts,"
        f" {len(dead)} dead letters for {sum(truth.reject_reasons.values())} rejects;"
        f" kill to ready: {', '.join(f'{r:.1f}' for r in recoveries)} s"
    )


def test_ten_sigkills_under_live_traffic_end_exactly_as_the_replay(
    broker: EmbeddedBroker, truth: Truth, tmp_path: Path
) -> None:
    _killed_and_restarted(broker, truth, kills=10, rate=1000, snapshots=tmp_path)


@pytest.mark.soak
def test_a_hundred_sigkills_under_live_traffic_end_exactly_as_the_replay(
    broker: EmbeddedBroker, truth: Truth, tmp_path: Path
) -> None:
    _killed_and_restarted(broker, truth, kills=100, rate=200, snapshots=tmp_path)


@pytest.mark.soak
def test_a_restart_costs_what_the_state_holds_not_what_the_topic_keeps() -> None:
    """From a SIGKILL restart to the first alert on an event produced right after it: 16 times
    more history costs at most 1.5 times the time (bench/restart_bench.py prints the figures)."""
    bench = Path(__file__).resolve().parent.parent / "bench" / "restart_bench.py"
    done = subprocess.run(
        [sys.executable, str(bench), "--small", "15000", "--factor", "16", "--runs", "3"],
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    print(done.stdout)
    ratio = float(done.stdout.rsplit("ratio ", 1)[1].split()[0])
    assert ratio <= 1.5, done.stdout
