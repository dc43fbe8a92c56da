"""`posmon run`'s `Service` with its source and sink injected: list in, list out (no broker).

The same object runs on Kafka in production; here a list of messages goes in and the published
alerts and dead letters come out, with the metrics and the probes as an operator sees them.
"""

from __future__ import annotations

from collections.abc import Sequence

import httpx

from monitor.cli.service import Service
from monitor.cli.settings import MetricsSettings, Settings
from monitor.core.alerts import Alert
from monitor.core.batches import Batch
from monitor.core.events import Rejection
from monitor.scoring.pipeline import replay_messages
from monitor.scoring.policy import Policy
from monitor.scoring.scorer import Scorer
from monitor.simulation.simulator import Simulation, SimulationSpec


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

    def poll(self) -> Batch | None:
        if not self._batches:
            return None
        chunk = self._batches.pop(0)
        self._read += len(chunk)
        return Batch([(0, chunk)], self._read, active=frozenset({0}))

    def commit(self, batch: Batch) -> None:
        assert isinstance(batch.position, int)
        self.committed = batch.position

    def assignment(self) -> set[int]:
        return {0}

    def lag(self) -> dict[int, int]:
        return {0: 0}

    def close(self) -> None:
        self.closed = True


class ListSink:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []
        self.dead_letters: list[Rejection] = []
        self.closed = False

    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
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
    assert service.ready() == (True, "ready: 1 partitions, 0 messages behind")
    source.rebuilding = True
    assert service.ready() == (False, "not ready: rebuilding state from the topic")
    service.endpoints.start()
    try:
        base = f"http://127.0.0.1:{service.endpoints.port}"
        assert httpx.get(f"{base}/readyz", trust_env=False).status_code == 503
        assert httpx.get(f"{base}/healthz", trust_env=False).status_code == 200
    finally:
        service.endpoints.stop()
