"""`posmon run`'s `Service` with its source and sink injected: list in, list out (no broker).

The same object runs on Kafka in production; here a list of messages goes in and the published
alerts and dead letters come out, with the metrics and the probes as an operator sees them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest

from monitor.cli.service import Service, StartAt
from monitor.cli.settings import MetricsSettings, ModelSettings, Settings
from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.core.events import Rejection
from monitor.scoring.features import FEATURES
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec
from tests.builders import final_states


class ListSource:
    """Batches from a list, as one assigned partition that is never behind; then the end."""

    def __init__(self, messages: Sequence[bytes], batch_size: int = 500) -> None:
        self._batches = [
            list(messages[i : i + batch_size]) for i in range(0, len(messages), batch_size)
        ]
        self._read = 0
        self.committed = 0
        self.closed = False
        self.rebalances = 1
        self.rebuilding = False
        self.start_at: StartAt | None = None  # set by the Service; this source never restarts

    def poll(self) -> Batch | None:
        if not self._batches:
            return None
        chunk = self._batches.pop(0)
        first = self._read + 1  # offsets as a replay's line numbers
        self._read += len(chunk)
        offsets = {0: range(first, self._read + 1)}
        return Batch([(0, chunk)], self._read, active=frozenset({0}), offsets=offsets)

    def commit(self, batch: Batch) -> None:
        assert isinstance(batch.position, int)
        self.committed = batch.position

    def assignment(self) -> set[int]:
        return {0}

    def lag(self) -> dict[int, int]:
        return {0: 0}

    def covered(self) -> dict[int, int] | None:
        return {0: self.committed}

    def close(self) -> None:
        self.closed = True


class Crash(Exception):  # noqa: N818 - reads as what happens
    """The process dies: nothing after it runs (no close of event time, no more commits)."""


class RestartingSource(ListSource):
    """A `ListSource` that starts as a member given its partition does: it asks the service
    where to start (`start_at`, with the group's `committed` offset), answers with a fresh
    batch, then reads from there, and stops after `stop_after` messages (a crash)."""

    def __init__(
        self, messages: Sequence[bytes], *, committed: int, stop_after: int | None = None
    ) -> None:
        super().__init__(messages, batch_size=1)
        self._messages = list(messages)
        self.committed = committed
        self._stop_after = stop_after
        self._assigned = False
        self.started_from: int | None = None

    def poll(self) -> Batch | None:
        if not self._assigned:
            self._assigned = True
            start = self.start_at(frozenset({0}), {0: self.committed}) if self.start_at else None
            self._read = start[0] if start else 0
            self.started_from = self._read
            return Batch([], {}, None, fresh=True)
        if self._stop_after is not None and self._read >= self._stop_after:
            raise Crash(f"crashed at offset {self._read}")
        if self._read >= len(self._messages):
            return None
        chunk = self._messages[self._read : self._read + 250]
        if self._stop_after is not None:
            chunk = chunk[: self._stop_after - self._read]
        first = self._read + 1
        self._read += len(chunk)
        return Batch(
            [(0, chunk)],
            self._read,
            active=frozenset({0}),
            offsets={0: range(first, self._read + 1)},
        )


class ListSink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dead_letters: list[Rejection] = []
        self.closed = False

    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[tuple[int, bytes | None, bytes]] = (),
    ) -> None:
        self.alerts.extend(alerts)
        self.dead_letters.extend(dead_letters)

    def close(self) -> None:
        self.closed = True


def _settings() -> Settings:
    return Settings(metrics=MetricsSettings(host="127.0.0.1", port=0))


def test_the_service_runs_list_in_list_out_as_a_replay_does() -> None:
    lines = list(Simulation(SimulationSpec(seed=5, hours=6, merchants=10)).lines())
    source, sink = ListSource(lines), ListSink()
    service = Service(_settings(), source, sink)
    service.run()  # returns at the end of the source, as a replay does
    replayed, _ = replay_messages(lines, Scorer(Policy()), batch_size=500)
    assert [a.alert_id for a in sink.alerts] == [a.alert_id for a in replayed.alerts]
    assert sink.alerts and sink.dead_letters == replayed.dead_letters
    assert source.committed == len(lines)
    assert source.closed and sink.closed
    value = service.registry.get_sample_value
    events = sum(service.scorer.consumed.values())
    assert events > 0
    assert sum(
        value("posmon_events_consumed_total", {"kind": kind}) or 0.0
        for kind in service.scorer.consumed
    ) == float(events)


def test_the_probes_answer_from_the_source_and_the_loop() -> None:
    source = ListSource([])
    service = Service(_settings(), source, ListSink())
    assert service.health() == (True, "ok")
    assert service.ready() == (False, "not ready: the lag of some partition is not known yet")
    service.lag = source.lag()  # as the loop reads it after a turn
    assert service.ready() == (True, "ready: 1 partitions, 0 messages behind")
    source.rebuilding = True
    assert service.ready() == (False, "not ready: rebuilding state from the topic")
    endpoints = service.endpoints
    assert endpoints is not None
    endpoints.start()
    try:
        base = f"http://127.0.0.1:{service.port}"
        assert httpx.get(f"{base}/readyz", trust_env=False).status_code == 503
        assert httpx.get(f"{base}/healthz", trust_env=False).status_code == 200
    finally:
        endpoints.stop()


def _snapshot_settings(directory: Path, every: float = 0.0) -> Settings:
    return Settings.model_validate(
        {
            "metrics": {"host": "127.0.0.1", "port": 0},
            "run": {"snapshot_dir": str(directory), "snapshot_every": every},
        }
    )


def test_a_restart_reads_the_snapshot_and_goes_on_as_one_uninterrupted_run(
    tmp_path: Path,
) -> None:
    """The first run stops (a crash: no close of event time) after 7,000 messages, having
    written snapshots as it went; the second starts from the last snapshot, not from 0, and
    the final alerts of both runs together are the replay's."""
    lines = list(Simulation(SimulationSpec(seed=5, hours=12, merchants=10)).lines())
    first_sink = ListSink()
    first = RestartingSource(lines, committed=0, stop_after=7000)
    service = Service(_snapshot_settings(tmp_path), first, first_sink)
    with pytest.raises(Crash):
        service.run()
    value = service.registry.get_sample_value
    assert value("posmon_snapshot_restores_total", {"outcome": "missing"}) == 1.0
    assert (value("posmon_snapshot_writes_total", {"outcome": "written"}) or 0) > 1

    second_sink = ListSink()
    second = RestartingSource(lines, committed=first.committed)
    restarted = Service(_snapshot_settings(tmp_path), second, second_sink)
    restarted.run()
    assert second.started_from is not None and 0 < second.started_from <= first.committed
    assert (
        restarted.registry.get_sample_value("posmon_snapshot_restores_total", {"outcome": "loaded"})
        == 1.0
    )

    replayed, _ = replay_messages(lines, Scorer(Policy()), batch_size=250)
    final = final_states(first_sink.alerts + second_sink.alerts)
    assert final == final_states(replayed.alerts)


def test_a_damaged_snapshot_falls_back_to_a_full_rebuild(tmp_path: Path) -> None:
    lines = list(Simulation(SimulationSpec(seed=5, hours=6, merchants=10)).lines())
    first = RestartingSource(lines, committed=0, stop_after=3000)
    with pytest.raises(Crash):
        Service(_snapshot_settings(tmp_path), first, ListSink()).run()
    (snapshot,) = tmp_path.glob("*.snapshot")
    snapshot.write_bytes(snapshot.read_bytes()[:-10])  # a torn write a rename would prevent

    sink = ListSink()
    second = RestartingSource(lines, committed=first.committed)
    service = Service(_snapshot_settings(tmp_path), second, sink)
    service.run()
    assert second.started_from == 0
    assert (
        service.registry.get_sample_value("posmon_snapshot_restores_total", {"outcome": "refused"})
        == 1.0
    )
    replayed, _ = replay_messages(lines, Scorer(Policy()), batch_size=250)
    assert final_states(sink.alerts) == final_states(replayed.alerts)


def test_a_snapshot_ahead_of_the_committed_offsets_is_not_used(tmp_path: Path) -> None:
    """A snapshot from an earlier topic or broker (its offsets beyond what the group
    committed) must not be applied to this one."""
    lines = list(Simulation(SimulationSpec(seed=5, hours=6, merchants=10)).lines())
    Service(_snapshot_settings(tmp_path), RestartingSource(lines, committed=0), ListSink()).run()
    second = RestartingSource(lines, committed=100)
    service = Service(_snapshot_settings(tmp_path), second, ListSink())
    service.run()
    assert second.started_from == 0


def test_the_service_writes_the_feature_log_of_every_scored_attempt(tmp_path: Path) -> None:
    """`model.feature_log`: every scored attempt lands in the Parquet log, with the live model's
    score and version, once the service stops."""
    lines = list(Simulation(SimulationSpec(seed=5, hours=3, merchants=10)).lines())
    settings = _settings().model_copy(
        update={"model": ModelSettings(feature_log=tmp_path / "features")}
    )
    service = Service(settings, ListSource(lines), ListSink())
    service.run()
    table = ds.dataset(tmp_path / "features", partitioning="hive").to_table()
    scored = service.scorer.tallies()["model_scored"]
    assert table.num_rows == scored > 0
    assert set(FEATURES) <= set(table.column_names)
    assert service.model is not None and service.model.live is not None
    assert set(table.column("model_version").to_pylist()) == {service.model.live.version}
    assert None not in table.column("score").to_pylist()
