"""The streaming monitor, `posmon run`: the scoring loop with metrics and probes (entry layer).

`Service` takes its source and sink, so the same object runs on Kafka (`posmon run`,
`posmon demo`: `KafkaSource`, `KafkaSink`) and in a test from a list into a list. `stop()` lets
the batch in hand finish: its alerts and dead letters are handed on (acknowledged by the broker)
and its offsets committed before the loop returns and the source and sink are closed, so a
graceful stop loses nothing and doubles nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from monitor.cli.settings import Settings
from monitor.core.alerts import Alert
from monitor.core.batches import Batch, Source
from monitor.core.events import Rejection
from monitor.observability.endpoints import Endpoints
from monitor.scoring.metrics import Metrics
from monitor.scoring.pipeline import Sink, Stats, run
from monitor.scoring.scorer import Scorer

_LAG_EVERY_S = 1.0


class StreamSource(Source, Protocol):
    """A source that belongs to a consumer group (`KafkaSource`): what the probes and the
    metrics read of it, from another thread, as of its last poll."""

    @property
    def rebalances(self) -> int: ...

    @property
    def rebuilding(self) -> bool: ...

    def assignment(self) -> set[int]: ...

    def lag(self) -> dict[int, int]: ...

    def close(self) -> None: ...


class DurableSink(Sink, Protocol):
    def close(self) -> None: ...


class TeeSink:
    """Publishes to the first sink (the durable one) and then to the others (console, file)."""

    def __init__(self, *sinks: Sink) -> None:
        self._sinks = sinks

    def publish(self, alerts: Sequence[Alert], dead_letters: Sequence[Rejection]) -> None:
        for sink in self._sinks:
            sink.publish(alerts, dead_letters)


class Service:
    def __init__(
        self,
        settings: Settings,
        source: StreamSource,
        sink: DurableSink,
        *,
        also: Sequence[Sink] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
    ) -> None:
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.scorer = Scorer(settings.policy)
        self.stats = Stats()
        self.source = source
        self.durable_sink = sink
        self.sink: Sink = TeeSink(sink, *also) if also else sink
        self._clock, self._wall = clock, wall
        self._stop = stop or threading.Event()
        self._last_turn = clock()
        self._last_lag_at = 0.0
        self.lag: dict[int, int] = {}
        self.endpoints = Endpoints(
            settings.metrics.host,
            settings.metrics.port,
            self.registry,
            health=self.health,
            ready=self.ready,
        )

    # -- probes (called from the HTTP thread) -----------------------------------------------

    def health(self) -> tuple[bool, str]:
        idle = self._clock() - self._last_turn
        if idle > self.settings.run.stall_after:
            return False, f"stalled: the loop has not turned for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        assigned = self.source.assignment()
        if not assigned:
            return False, "not ready: no partition assigned"
        if self.source.rebuilding:
            return False, "not ready: rebuilding state from the topic"
        behind = sum(self.lag.values())
        if behind > self.settings.run.ready_max_lag:
            return (
                False,
                f"not ready: {behind} messages behind (max {self.settings.run.ready_max_lag})",
            )
        return True, f"ready: {len(assigned)} partitions, {behind} messages behind"

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> None:
        """Score until `stop()` or the end of the source; then finish the batch in hand, commit
        and close everything."""
        self.endpoints.start()
        try:
            run(
                self.source,
                self.sink,
                self.scorer,
                self.stats,
                stopping=self._stop.is_set,
                on_batch=self._after_batch,
                timer=time.perf_counter,
            )
        finally:
            self.durable_sink.close()
            self.source.close()
            self.endpoints.stop()

    def stop(self) -> None:
        self._stop.set()

    def _after_batch(self, batch: Batch, seconds: float) -> None:
        now = self._clock()
        self._last_turn = now
        scorer, stats = self.scorer, self.stats
        maxima = scorer.watermark.maxima
        newest = max(maxima.values()) / 1e6 if maxima else None
        self.metrics.observe_scorer(
            scorer,
            stats,
            seconds=seconds,
            newest_event_lag=(self._wall() - newest) if newest is not None and len(batch) else None,
            watermark_s=scorer.watermark.value / 1e6 if maxima else None,
        )
        stats.new_in_batch, stats.emitted_in_batch = [], []
        if now - self._last_lag_at >= _LAG_EVERY_S:
            self._last_lag_at = now
            self.lag = self.source.lag()
            self.metrics.set_consumer_lag(self.lag)
            self.metrics.observe_state(
                sizes=scorer.state_sizes(),
                rebalances=self.source.rebalances,
                watermark_delay=self._wall() - scorer.watermark.value / 1e6 if maxima else None,
                partition_delays={p: self._wall() - t / 1e6 for p, t in maxima.items()},
            )
