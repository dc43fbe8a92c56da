"""Hot reload of the anomaly model (`monitor.cli.anomaly.Reloader`): a new artifact is swapped in
between batches, one that cannot be trusted is refused and the running model goes on.

- `Reloader` alone, with an injected clock: the files are looked at every `reload_every`, or at
  once after `request()` (SIGHUP); an unchanged artifact is not loaded again, a refused one is
  counted once by its outcome and not retried until it changes (or a SIGHUP asks), a missing
  one is waited for, a shadow reloads beside the live model. Artifacts that used to pass the
  load and fail later in the running monitor (a card short of a feature's drift bins, arrays of
  the wrong shape) are refused like the others.
- `posmon run` against the embedded broker: SIGHUP after a tampered, a mismatched and a
  parity-failing artifact counts each refusal in `posmon_model_reload_total{outcome}` while the
  old model keeps scoring (its alerts carry its version, `posmon_model_info` keeps it); SIGHUP
  after a valid one swaps it in; with `model.reload_every: 1s` a new artifact is picked up
  without a signal; a SIGHUP while `posmon run` still waits for its broker does not end it.

The models are small (tests/test_model.py's helpers) with an alert rate of 2 %, so each chunk of
the streamed simulation raises model alerts.
"""

from __future__ import annotations

import json
import logging
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from models.export import npz_bytes
from models.rows import Replayed
from models.train import Trained
from monitor.cli.anomaly import Reloader, model_slot
from monitor.cli.settings import ModelSettings
from monitor.core.alerts import Alert
from monitor.scoring.model import ARRAYS, ModelSlot
from monitor.simulation.simulator import Simulation, SimulationSpec
from monitor.streaming.embedded import EmbeddedBroker
from monitor.streaming.produce import produce_lines
from monitor.streaming.settings import KafkaSettings
from monitor.streaming.topics import committed_offsets, read_topic
from tests.broker import free_port, fresh_topic, kafka_settings, monitor_environ, scrape, wait_for
from tests.test_broker_outage import Process
from tests.test_model import (
    edit_card,
    flip_a_byte,
    other_feature_version,
    parity_off,
    read_arrays,
    simulated_rows,
    trained,
    write_arrays,
)

ALERT_RATE = 0.02
STREAMED = SimulationSpec(hours=6.0, seed=9, merchants=20)  # not the training period (seed 5)

Tamper = Callable[[Path], None]
UNREADABLE = "refused_unreadable"
REFUSALS: list[tuple[str, Tamper, str]] = [
    ("forest.npz altered", flip_a_byte, UNREADABLE),
    ("another feature version", lambda d: edit_card(d, other_feature_version), "refused_mismatch"),
    ("parity off", lambda d: edit_card(d, parity_off), "refused_parity"),
]


def _two_dimensional_children(directory: Path) -> None:
    arrays = read_arrays(directory)
    arrays["m0_children"] = arrays["m0_children"].reshape(-1, 1)
    write_arrays(directory, npz_bytes(arrays))  # the card's hash follows


# Artifacts that once got past the checks and failed later, in the running monitor: the swap
# (a card without the drift bins of a feature) or the scoring (arrays of the wrong shape).
LATE_FAILURES: list[tuple[str, Tamper, str]] = [
    ("no drift bins", lambda d: edit_card(d, lambda c: c["drift"].pop("weekend")), UNREADABLE),
    ("a two-dimensional array", _two_dimensional_children, UNREADABLE),
]


@pytest.fixture(scope="module")
def replayed(tmp_path_factory: pytest.TempPathFactory) -> Replayed:
    return simulated_rows(tmp_path_factory.mktemp("simulation"))


@pytest.fixture(scope="module")
def models(replayed: Replayed) -> tuple[Trained, Trained]:
    """Two different valid models (seeds 1 and 2)."""
    first, second = (trained(replayed, seed, alert_rate=ALERT_RATE) for seed in (1, 2))
    assert first.model.version != second.model.version
    return first, second


# -- Reloader, with an injected clock ----------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _reloader(
    directory: Path, clock: Clock, *, every: float = 10.0, shadow: Path | None = None
) -> tuple[ModelSlot, Reloader]:
    settings = ModelSettings(path=directory, reload_every=every, shadow=shadow)
    slot = model_slot(settings)
    assert slot is not None
    return slot, Reloader(slot, settings, clock)


@pytest.fixture
def artifact(models: tuple[Trained, Trained], tmp_path: Path) -> Path:
    directory = tmp_path / "model"
    models[0].write(directory)
    return directory


def test_an_unchanged_artifact_is_not_loaded_again(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    live = slot.live
    for _ in range(5):
        clock.now += 10
        reloader.check()
    assert slot.live is live and slot.tally.version == models[0].model.version
    assert sum(slot.tally.reloads.values()) == 0


def test_the_same_model_written_again_is_not_counted(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    live = slot.live
    models[0].write(artifact)  # new files, the same version
    clock.now += 10
    reloader.check()
    assert slot.live is live
    assert sum(slot.tally.reloads.values()) == 0


def test_a_new_artifact_is_looked_at_every_reload_every(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    first, second = models
    slot.tally.psi = {"amount_minor": 0.3}
    drift = slot.drift
    second.write(artifact)
    clock.now += 9.9
    reloader.check()
    assert slot.tally.version == first.model.version  # not yet time to look
    clock.now += 0.1
    reloader.check()
    assert slot.live is not None and slot.live.card == second.model.card
    assert slot.tally.version == second.model.version
    assert slot.tally.reloads == {"loaded": 1}
    assert slot.drift is not drift and slot.tally.psi == {}  # the drift window starts again
    clock.now += 10
    reloader.check()
    assert slot.tally.reloads == {"loaded": 1}


def test_a_request_looks_at_once_and_loads_even_an_unchanged_artifact(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock, every=3600.0)
    live = slot.live
    reloader.check()
    assert slot.live is live
    reloader.request()  # SIGHUP
    reloader.check()
    assert slot.live is not live and slot.live is not None
    assert slot.live.version == models[0].model.version
    assert slot.tally.reloads == {"loaded": 1}
    models[1].write(artifact)
    reloader.request()
    reloader.check()  # no time has passed
    assert slot.tally.version == models[1].model.version
    assert slot.tally.reloads == {"loaded": 2}
    reloader.check()  # the request is used up
    assert slot.tally.reloads == {"loaded": 2}


def test_reload_every_0_looks_only_when_asked(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock, every=0.0)
    models[1].write(artifact)
    for _ in range(3):
        clock.now += 86_400
        reloader.check()
    assert slot.tally.version == models[0].model.version
    reloader.request()
    reloader.check()
    assert slot.tally.version == models[1].model.version
    assert slot.tally.reloads == {"loaded": 1}


@pytest.mark.parametrize(
    ("tamper", "outcome"),
    [(t, o) for _, t, o in REFUSALS + LATE_FAILURES],
    ids=[name for name, _, _ in REFUSALS + LATE_FAILURES],
)
def test_a_refused_artifact_is_counted_once_and_the_model_goes_on(
    artifact: Path,
    models: tuple[Trained, Trained],
    tamper: Tamper,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    live, first = slot.live, models[0].model.version
    tamper(artifact)
    clock.now += 10
    reloader.check()  # perhaps still being written: judged at the next look
    assert slot.live is live and not slot.tally.reloads
    clock.now += 10
    with caplog.at_level(logging.WARNING, logger="posmon.model"):
        reloader.check()
    assert slot.live is live and slot.tally.version == first
    assert slot.tally.reloads == {outcome: 1}
    [record] = [r for r in caplog.records if r.name == "posmon.model"]
    assert record.levelno == logging.WARNING
    assert str(artifact) in record.message and "refused" in record.message
    assert f"{first} goes on" in record.message
    clock.now += 10
    reloader.check()  # the same refused files: not tried again
    assert slot.tally.reloads == {outcome: 1}
    reloader.request()  # unless asked
    reloader.check()
    assert slot.tally.reloads == {outcome: 2}
    assert slot.live is live
    models[1].write(artifact)  # the artifact fixed
    clock.now += 10
    reloader.check()
    assert slot.tally.version == models[1].model.version
    assert slot.tally.reloads == {outcome: 2, "loaded": 1}


def test_a_missing_artifact_is_waited_for(artifact: Path, models: tuple[Trained, Trained]) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    live = slot.live
    (artifact / ARRAYS).unlink()
    clock.now += 10
    reloader.check()
    assert slot.live is live and sum(slot.tally.reloads.values()) == 0
    models[1].write(artifact)
    clock.now += 10
    reloader.check()
    assert slot.tally.version == models[1].model.version
    assert slot.tally.reloads == {"loaded": 1}


def test_the_shadow_reloads_beside_the_live_model(
    artifact: Path, models: tuple[Trained, Trained], tmp_path: Path
) -> None:
    shadow = tmp_path / "shadow"
    models[0].write(shadow)
    clock = Clock()
    slot, reloader = _reloader(artifact, clock, shadow=shadow)
    live = slot.live
    assert slot.tally.shadow_version == models[0].model.version
    models[1].write(shadow)
    clock.now += 10
    reloader.check()
    assert slot.live is live
    assert slot.tally.shadow_version == models[1].model.version
    assert slot.shadow is not None and slot.shadow.version == models[1].model.version
    assert slot.tally.reloads == {"loaded": 1}
    flip_a_byte(shadow)
    for _ in range(2):  # refused at the second look at the same files
        clock.now += 10
        reloader.check()
    assert slot.tally.shadow_version == models[1].model.version
    assert slot.tally.reloads == {"loaded": 1, "refused_unreadable": 1}


# -- posmon run on the embedded broker ---------------------------------------------------------


class Monitor:
    """A `posmon run` on a fresh topic, with the model in `directory`, watched via /metrics."""

    def __init__(self, broker: EmbeddedBroker, directory: Path, reload_every: str) -> None:
        topic = fresh_topic(broker, partitions=3)
        self.settings: KafkaSettings = kafka_settings(broker, topic, idle_partition_s=1.0)
        self.port = free_port()
        config = directory.parent / "posmon.yaml"
        config.write_text(
            f"model:\n  path: {json.dumps(str(directory))}\n  reload_every: {reload_every}\n",
            encoding="utf-8",
        )
        self.process = Process(
            ["run"], monitor_environ(self.settings, self.port, POSMON_CONFIG=str(config))
        )
        self.produced = 0

    def produce(self, lines: list[bytes]) -> None:
        sent = produce_lines(self.settings, self.settings.topic, lines, rate=None)
        assert sent == len(lines)
        self.produced += sent

    def samples(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of /metrics (none while it is not up)."""
        return scrape(self.port)

    def value(self, name: str, **labels: str) -> float | None:
        """The sum of the samples of `name` with these labels, whatever their `stage` (the
        model runs in the card stage of `posmon run`: its series carry `stage="card"`)."""
        found = [
            v
            for (n, have), v in self.samples().items()
            if n == name and {k: x for k, x in have if k != "stage"} == labels
        ]
        return sum(found) if found else None

    def reloads(self, outcome: str) -> float | None:
        return self.value("posmon_model_reload_total", outcome=outcome)

    def counted(self, outcome: str, times: float) -> bool:
        return self.reloads(outcome) == times

    def versions(self) -> set[str]:
        """The live versions `posmon_model_info` shows."""
        return {
            dict(labels)["version"]
            for (name, labels), value in self.samples().items()
            if name == "posmon_model_info" and dict(labels).get("role") == "live" and value == 1
        }

    def scored(self) -> float:
        return self.value("posmon_model_scored_total", role="live") or 0.0

    def hangup(self) -> None:
        self.process.popen.send_signal(signal.SIGHUP)

    def caught_up(self, scored_before: float) -> None:
        """Everything produced is committed and more requests were scored."""
        wait_for(
            lambda: (
                sum(committed_offsets(self.settings).values()) >= self.produced
                and self.scored() > scored_before
            ),
            30,
            f"{self.produced} events committed and scored",
        )

    def model_alerts(self) -> dict[tuple[int, int], Alert]:
        """The model's alert records on the alerts topic, by (partition, offset)."""
        records = read_topic(self.settings, self.settings.alerts_topic, timeout_s=30)
        alerts = {(r.partition, r.offset): Alert.model_validate_json(r.value) for r in records}
        return {at: a for at, a in alerts.items() if a.detector == "model_outlier"}


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.kill()


@pytest.fixture(scope="module")
def streamed() -> list[list[bytes]]:
    """The streamed period in three chunks, in the order the simulator writes it."""
    lines = list(Simulation(STREAMED).lines())
    third = len(lines) // 3
    return [lines[:third], lines[third : 2 * third], lines[2 * third :]]


def test_sighup_swaps_in_a_valid_model_and_refuses_the_others_while_the_old_one_scores(
    broker: EmbeddedBroker,
    models: tuple[Trained, Trained],
    streamed: list[list[bytes]],
    tmp_path: Path,
    processes: list[Process],
) -> None:
    first, second = models
    old, new = first.model.version, second.model.version
    directory = tmp_path / "model"
    first.write(directory)
    monitor = Monitor(broker, directory, reload_every="0s")  # only SIGHUP looks
    processes.append(monitor.process)
    wait_for(
        lambda: monitor.reloads("loaded") == 0.0 and monitor.versions() == {old},
        60,
        f"posmon_model_info of {old}",
    )
    monitor.produce(streamed[0])
    monitor.caught_up(0.0)

    for name, tamper, outcome in REFUSALS:
        first.write(directory)
        tamper(directory)
        monitor.hangup()
        wait_for(partial(monitor.counted, outcome, 1.0), 15, f"{outcome} after {name}")
        assert monitor.versions() == {old}, name
    refused = [line for line in monitor.process.lines if "refused" in line]
    assert len(refused) == len(REFUSALS), monitor.process.lines
    assert all(f"{old} goes on" in line for line in refused)

    # The old model goes on scoring, and its alerts say so.
    scored = monitor.scored()
    monitor.produce(streamed[1])
    monitor.caught_up(scored)
    before = monitor.model_alerts()
    assert before, "no model alert: the test says nothing about the version alerts carry"
    assert {a.model_version for a in before.values()} == {old}
    assert monitor.reloads("loaded") == 0.0

    second.write(directory)
    hung_up = time.monotonic()
    monitor.hangup()
    wait_for(lambda: monitor.versions() == {new}, 15, f"posmon_model_info of {new} alone")
    shown = time.monotonic() - hung_up
    assert monitor.reloads("loaded") == 1.0
    assert [monitor.reloads(o) for _, _, o in REFUSALS] == [1.0, 1.0, 1.0]
    scored = monitor.scored()
    monitor.produce(streamed[2])
    monitor.caught_up(scored)
    after = [a for at, a in monitor.model_alerts().items() if at not in before]
    versions = {a.model_version for a in after}
    assert new in versions and versions <= {old, new}  # an incident opened before may go on
    print(
        f"\nmodel alert records: {len(before)} of {old} before the reload, {len(after)} after"
        f" ({sum(a.model_version == new for a in after)} of {new}); SIGHUP to the new version"
        f" in /metrics: {shown:.2f} s"
    )
    assert any(f"live model {new} loaded" in line for line in monitor.process.lines)

    monitor.process.popen.send_signal(signal.SIGTERM)
    assert monitor.process.finish(30) == 0, monitor.process.lines
    assert not any("Traceback" in line for line in monitor.process.lines)


def test_with_reload_every_a_new_artifact_is_picked_up_without_a_signal(
    broker: EmbeddedBroker,
    models: tuple[Trained, Trained],
    streamed: list[list[bytes]],
    tmp_path: Path,
    processes: list[Process],
) -> None:
    first, second = models
    directory = tmp_path / "model"
    first.write(directory)
    monitor = Monitor(broker, directory, reload_every="1s")
    processes.append(monitor.process)
    wait_for(lambda: monitor.versions() == {first.model.version}, 60, "the first model")
    monitor.produce(streamed[0])
    monitor.caught_up(0.0)
    written = time.monotonic()
    second.write(directory)
    wait_for(lambda: monitor.versions() == {second.model.version}, 15, "the new model")
    print(f"\nreload_every 1 s: the new model shown {time.monotonic() - written:.1f} s after")
    assert monitor.reloads("loaded") == 1.0
    time.sleep(2.5)  # two more looks at the unchanged artifact
    assert monitor.reloads("loaded") == 1.0
    assert sum(monitor.reloads(o) or 0.0 for _, _, o in REFUSALS) == 0.0
    scored = monitor.scored()
    monitor.produce(streamed[1])
    monitor.caught_up(scored)
    monitor.process.popen.send_signal(signal.SIGTERM)
    assert monitor.process.finish(30) == 0, monitor.process.lines


def test_a_sighup_before_the_model_is_loaded_does_not_stop_posmon_run(
    processes: list[Process],
) -> None:
    """While `posmon run` waits for its broker it has no model to reload yet: a SIGHUP (a
    deployment that wrote a new artifact) is ignored, not the default action, which ends it."""
    settings = KafkaSettings(bootstrap_servers=f"127.0.0.1:{free_port()}")  # nothing listens
    process = Process(["run"], monitor_environ(settings, free_port()))
    processes.append(process)
    process.wait_for_line("not reachable", timeout=30)
    process.popen.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert process.popen.poll() is None, process.lines
    process.popen.send_signal(signal.SIGTERM)
    assert process.finish(10) == 0, process.lines


def test_an_artifact_caught_half_written_is_not_refused(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    """A look between the writes of the two files (new arrays, old card) refuses nothing; the
    next look, once the card is written too, loads the new model."""
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    (artifact / ARRAYS).write_bytes(models[1].arrays)  # the card is not written yet
    clock.now += 10
    reloader.check()
    assert not slot.tally.reloads and slot.tally.version == models[0].model.version
    models[1].write(artifact)
    clock.now += 10
    reloader.check()
    assert slot.tally.reloads == {"loaded": 1}
    assert slot.tally.version == models[1].model.version


def test_a_sighup_with_no_artifact_is_counted(
    artifact: Path, models: tuple[Trained, Trained]
) -> None:
    clock = Clock()
    slot, reloader = _reloader(artifact, clock)
    (artifact / ARRAYS).unlink()
    reloader.request()
    reloader.check()
    assert slot.tally.reloads == {"refused_unreadable": 1}
    assert slot.tally.version == models[0].model.version
