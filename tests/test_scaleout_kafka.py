"""The partitioned design on the embedded broker: merchant and card members as real `posmon run`
processes, in their two consumer groups, give `posmon replay`'s alerts.

Simulated traffic (with card testing across merchants) goes to a 6-partition topic keyed by
merchant. Three `posmon run --stage merchant` processes split it and hand the card stage its
events and markers on a 4-partition cards topic, which two `posmon run --stage card` processes
split. Once everything is committed and the stream has gone quiet, each alert id's final
version (the highest revision, compared without it) equals the replay's. A second test runs the
default, `--stage both`, in two processes, with the model.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
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
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import committed_offsets, ensure_topics, read_topic
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ, scrape, wait_for
from tests.builders import final_states

REPO = Path(__file__).resolve().parent.parent
SPEC = SimulationSpec(seed=23, hours=2.0, merchants=24)


def _start(environ: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "monitor", "run", *args],
        cwd=REPO,
        env=environ,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _alerts(settings: KafkaSettings) -> list[Alert]:
    return [Alert.model_validate_json(r.value) for r in read_topic(settings, settings.alerts_topic)]


def _all_committed(settings: KafkaSettings, topic: str, group: str) -> bool:
    records = read_topic(settings, topic)
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    reader = settings.model_copy(update={"topic": topic, "group": group})
    committed = committed_offsets(reader)
    return bool(ends) and all(committed.get(p, 0) >= end for p, end in ends.items())


def _run_to_quiescence(
    settings: KafkaSettings,
    lines: list[bytes],
    members: list[tuple[str, int]],
    processes: list[subprocess.Popen[str]],
    before_stop: Callable[[], None] = lambda: None,
    **extra: str,
) -> list[Alert]:
    """Start the members (stage, metrics port), produce the lines, wait until both groups have
    committed everything and the quiet stream took its last decisions, stop them."""
    for stage, port in members:
        environ = monitor_environ(settings, port, POSMON_RUN__READY_MAX_LAG="0", **extra)
        processes.append(_start(environ, "--stage", stage))
    assert produce_lines(settings, settings.topic, lines, rate=None) == len(lines)
    cards, group = settings.cards_topic_name, settings.cards_group_id
    wait_for(
        lambda: sum(committed_offsets(settings).values()) >= len(lines),
        120,
        "the merchant group to commit the events topic",
        every=0.5,
    )
    wait_for(lambda: _all_committed(settings, cards, group), 60, "the card group", every=0.5)
    seen = -1
    for _ in range(30):  # the idle rule (1 s) closes the quiet stream; then nothing changes
        time.sleep(2.0)
        now = len(_alerts(settings))
        if now == seen:
            break
        seen = now
    before_stop()
    for process in processes:
        process.send_signal(signal.SIGTERM)
    for process in processes:
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
    return _alerts(settings)


def test_three_merchant_and_two_card_members_give_replays_alerts(
    broker: EmbeddedBroker, processes: list[subprocess.Popen[str]]
) -> None:
    lines = list(Simulation(SPEC).lines())
    expected, _ = replay_messages(lines, Scorer(Policy()))
    card_level = [a for a in expected.alerts if a.details.get("scope") == "card"]
    assert card_level, "the traffic has card testing for the card stage to find"
    settings = kafka_settings(broker, fresh_topic(broker, partitions=6), idle_partition_s=1.0)
    ensure_topics(settings, {settings.cards_topic_name: 4})
    members = [("merchant", free_port()) for _ in range(3)] + [
        ("card", free_port()) for _ in range(2)
    ]
    alerts = _run_to_quiescence(settings, lines, members, processes, POSMON_MODEL__ENABLED="false")
    assert final_states(alerts) == final_states(expected.alerts)


def test_both_stages_in_two_processes_with_the_model(
    broker: EmbeddedBroker, processes: list[subprocess.Popen[str]]
) -> None:
    """The default: each process runs both stages; the model runs in the card stage, whose
    topic posmon creates with one partition; one /metrics shows both, the card stage's with
    `stage="card"`."""
    lines = list(Simulation(SPEC).lines())
    slot = ModelSlot(live=load_model(DEFAULT_MODEL))
    expected, _ = replay_messages(lines, Scorer(Policy(), slot))
    settings = kafka_settings(broker, fresh_topic(broker, partitions=6), idle_partition_s=1.0)
    ports = [free_port(), free_port()]
    scraped: list[dict[tuple[str, frozenset[tuple[str, str]]], float]] = []
    alerts = _run_to_quiescence(
        settings,
        lines,
        [("both", p) for p in ports],
        processes,
        before_stop=lambda: scraped.extend(scrape(p) for p in ports),
    )
    assert final_states(alerts) == final_states(expected.alerts)
    card = frozenset({("stage", "card")})
    forwarded = sum(m.get(("posmon_forwarded_events_total", frozenset()), 0) for m in scraped)
    applied = sum(
        v
        for m in scraped
        for (name, labels), v in m.items()
        if name == "posmon_events_consumed_total" and ("stage", "card") in labels
    )
    assert forwarded >= applied > 0.5 * len(lines)  # requests and outcomes, for the model
    assert all(("posmon_card_markers_total", card) in m for m in scraped)
    scored = sum(
        v
        for m in scraped
        for (name, labels), v in m.items()
        if name == "posmon_model_scored_total" and ("stage", "card") in labels
    )
    assert scored > 0  # the model runs in the card stage


def _killed_members(
    broker: EmbeddedBroker,
    processes: list[subprocess.Popen[str]],
    *,
    kills: int,
    spec: SimulationSpec,
    rate: float,
    seed: int,
) -> None:
    """Three merchant and two card members, each with its static membership id, while the
    events arrive at `rate`; `kills` times a random member is SIGKILLed and started again. At
    the end, each alert id's final version equals the replay's."""
    lines = list(Simulation(spec).lines())
    expected, _ = replay_messages(lines, Scorer(Policy()))
    settings = kafka_settings(broker, fresh_topic(broker, partitions=6), idle_partition_s=1.0)
    ensure_topics(settings, {settings.cards_topic_name: 4})
    members = [("merchant", free_port()) for _ in range(3)] + [
        ("card", free_port()) for _ in range(2)
    ]
    environs = [
        monitor_environ(
            settings,
            port,
            POSMON_RUN__READY_MAX_LAG="0",
            POSMON_MODEL__ENABLED="false",
            POSMON_KAFKA__GROUP_INSTANCE_ID=f"{stage}-{n}",
        )
        for n, (stage, port) in enumerate(members)
    ]
    running = [
        _start(env, "--stage", stage) for env, (stage, _) in zip(environs, members, strict=True)
    ]
    processes.extend(running)
    rng = random.Random(seed)
    producer = threading.Thread(
        target=produce_lines, args=(settings, settings.topic, lines), kwargs={"rate": rate}
    )
    window = len(lines) / rate
    moments = sorted(rng.uniform(1.0, window) for _ in range(kills))
    started = time.monotonic()
    producer.start()
    killed: list[str] = []
    for moment in moments:
        time.sleep(max(0.0, started + moment - time.monotonic()))
        n = rng.randrange(len(members))
        running[n].kill()
        running[n].wait()
        killed.append(members[n][0])
        running[n] = _start(environs[n], "--stage", members[n][0])
        processes.append(running[n])
    producer.join()
    wait_for(
        lambda: sum(committed_offsets(settings).values()) >= len(lines),
        180,
        "the merchant group to commit the events topic",
        every=0.5,
    )
    cards, group = settings.cards_topic_name, settings.cards_group_id
    wait_for(lambda: _all_committed(settings, cards, group), 120, "the card group", every=0.5)
    seen = -1
    for _ in range(30):
        time.sleep(2.0)
        now = len(_alerts(settings))
        if now == seen:
            break
        seen = now
    for process in running:
        process.send_signal(signal.SIGTERM)
    for process in running:
        output, _ = process.communicate(timeout=30)
        assert process.returncode == 0, output
    assert final_states(_alerts(settings)) == final_states(expected.alerts), f"killed: {killed}"


def test_members_killed_under_live_traffic_give_replays_alerts(
    broker: EmbeddedBroker, processes: list[subprocess.Popen[str]]
) -> None:
    _killed_members(broker, processes, kills=3, spec=SPEC, rate=2000, seed=3)


@pytest.mark.soak
def test_soak_members_killed_at_random_under_live_traffic(
    broker: EmbeddedBroker, processes: list[subprocess.Popen[str]]
) -> None:
    spec = SimulationSpec(seed=29, hours=26.0, merchants=30)
    _killed_members(broker, processes, kills=30, spec=spec, rate=1500, seed=29)


def test_the_model_on_a_cards_topic_of_several_partitions_is_refused_at_start(
    broker: EmbeddedBroker,
) -> None:
    """The model's terminal and merchant features need every request in one card member: a
    card stage with the model on a cards topic of more partitions would score with features
    that see a share of each terminal, so it does not start (one line, exit 2)."""
    settings = kafka_settings(broker, fresh_topic(broker, partitions=2))
    ensure_topics(settings, {settings.cards_topic_name: 3})
    environ = monitor_environ(settings, free_port())
    done = subprocess.run(
        [sys.executable, "-m", "monitor", "run"],
        cwd=REPO,
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("posmon: error: ")
    assert f"{settings.cards_topic_name} has 3 partitions" in error
    assert "Traceback" not in done.stderr
