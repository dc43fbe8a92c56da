"""The streaming monitor: the scoring loop on Kafka, with metrics and probes (entry layer).

`posmon run` and `posmon demo` build a `Service`, start it, and call `stop()` from a signal
handler or when the demo ends. `stop()` lets the batch in hand finish: its alerts and dead
letters are acknowledged by the broker and its offsets committed before the loop returns and the
consumer leaves the group, so a graceful stop loses nothing and doubles nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from prometheus_client import CollectorRegistry

from monitor.alerts import Alert
from monitor.endpoints import Endpoints
from monitor.events import Rejection
from monitor.kafka import KafkaSink, KafkaSource
from monitor.metrics import Metrics
from monitor.pipeline import Batch, Sink, Stats, run
from monitor.scoring import Scorer
from monitor.settings import Settings

_LAG_EVERY_S = 1.0


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
        self.source = KafkaSource(settings.kafka)
        self.kafka_sink = KafkaSink(settings.kafka)
        self.sink: Sink = TeeSink(self.kafka_sink, *also) if also else self.kafka_sink
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
        """Score until `stop()`; then finish the batch in hand, commit and close everything."""
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
            self.kafka_sink.close()
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
