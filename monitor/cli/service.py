"""The streaming monitor, `posmon run`: the scoring loop with metrics and probes (entry layer).

`Service` takes its source and sink, so the same object runs on Kafka (`posmon run`,
`posmon demo`: `KafkaSource`, `KafkaSink`) and in a test from a list into a list. `stop()` lets
the batch in hand finish: its alerts and dead letters are handed on (acknowledged by the broker)
and its offsets committed before the loop returns and the source and sink are closed, so a
graceful stop loses nothing and doubles nothing.

Labels (the risk team's verdicts, `monitor.streaming.labelstopic`) come from a `LabelFeed` of
their own: every batch, what arrived meanwhile goes to the scorer before the batch is scored and
the watermark advanced, so each label takes effect once the watermark passes its `known_at`;
every new state (after any assignment) gets every label again, before its first events.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from prometheus_client import CollectorRegistry

from monitor.cli.anomaly import Reloader, model_slot
from monitor.cli.settings import Settings
from monitor.cli.snapshots import SnapshotStore
from monitor.core.alerts import Alert
from monitor.core.batches import Batch, Source
from monitor.core.events import Rejection
from monitor.core.labels import Label
from monitor.observability.endpoints import Endpoints, Staged
from monitor.scoring.detectors.base import Stage
from monitor.scoring.handoff import Handoff, Record
from monitor.scoring.metrics import CardMetrics, Metrics
from monitor.scoring.pipeline import Sink, Stats, run
from monitor.scoring.scorer import Scorer
from monitor.scoring.snapshot import SnapshotError, dumps, loads
from monitor.streaming.featurelog import FeatureLog

_LAG_EVERY_S = 1.0
log = logging.getLogger("posmon.run")

StartAt = Callable[[frozenset[int], Mapping[int, int]], Mapping[int, int] | None]


class StreamSource(Source, Protocol):
    """A source that belongs to a consumer group (`KafkaSource`): what the probes and the
    metrics read of it, from another thread, as of its last poll."""

    @property
    def rebalances(self) -> int: ...

    @property
    def rebuilding(self) -> bool: ...

    def assignment(self) -> set[int]: ...

    def lag(self) -> dict[int, int]: ...

    def covered(self) -> dict[int, int] | None: ...

    def close(self) -> None: ...

    # Called on the polling thread after each new assignment: the offsets to read each held
    # partition from (a snapshot's), or None for the beginning.
    start_at: StartAt | None


class LabelRead(Protocol):
    """What a read of the labels gave (`labelstopic.LabelRead`)."""

    @property
    def labels(self) -> Sequence[Label]: ...

    @property
    def invalid(self) -> int: ...  # records that are not labels, each counted once


class LabelFeed(Protocol):
    """The labels topic as the loop reads it (`labelstopic.KafkaLabels`)."""

    topic: str

    def poll(self) -> LabelRead:
        """What arrived since the last call, without waiting."""

    def rewind(self, *, stopping: Callable[[], bool]) -> LabelRead:
        """Every label from the beginning to the end as of now (a bounded wait)."""

    def close(self) -> None: ...


class DurableSink(Sink, Protocol):
    def close(self) -> None: ...


class TeeSink:
    """Publishes to the first sink (the durable one) and then to the others (console, file)."""

    def __init__(self, *sinks: Sink) -> None:
        self._sinks = sinks

    def publish(
        self,
        alerts: Sequence[Alert],
        dead_letters: Sequence[Rejection],
        handoffs: Sequence[Record] = (),
    ) -> None:
        """The records for the card stage go to the durable sink only."""
        for n, sink in enumerate(self._sinks):
            sink.publish(alerts, dead_letters, handoffs if n == 0 else ())


class _TakingLabels:
    """The source as the loop polls it: after each batch is read, the labels that arrived
    meanwhile go to the scorer, before the batch is scored (its watermark advanced). A fresh
    batch gets none: the new state it announces reads every label again (`Service._restart`)."""

    def __init__(self, service: Service, labels: LabelFeed) -> None:
        self._service, self._labels = service, labels

    def poll(self) -> Batch | None:
        batch = self._service.source.poll()
        if batch is not None and not batch.fresh:
            self._service.learn(self._labels.poll())
        return batch

    def commit(self, batch: Batch) -> None:
        self._service.source.commit(batch)


class Service:
    def __init__(
        self,
        settings: Settings,
        source: StreamSource,
        sink: DurableSink,
        *,
        labels: LabelFeed | None = None,
        also: Sequence[Sink] = (),
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        stop: threading.Event | None = None,
        stage: Stage = "all",
        handoff: Handoff | None = None,
        card: Service | None = None,
        serve: bool = True,
    ) -> None:
        """`stage`: which stage of the scorer this loop runs (docs/streaming.md, "Scale-out");
        a merchant stage is given its `handoff`, and, when the card stage runs beside it in
        the process (`run.stage: both`), that `card` service, whose series it serves with
        `stage="card"` and whose probes it answers for (the card service is built with `serve`
        false: one port). A card stage's series carry `stage="card"` when it serves alone too.
        """
        self.settings = settings
        self.stage: Stage = stage
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.card_metrics = CardMetrics(self.registry) if stage == "card" else None
        self.handoff = handoff
        self.card = card
        self._invalid_logged, self._invalid_at = 0, -60.0
        # The model belongs to the stage that runs model_outlier: "all" or "card".
        self.model = (
            model_slot(settings.model, keep_rows=settings.model.feature_log is not None)
            if stage in ("all", "card")
            else None
        )
        self._reloader = (
            Reloader(self.model, settings.model, clock)
            if self.model is not None and settings.model.enabled
            else None
        )
        self._feature_log = (
            FeatureLog(settings.model.feature_log)
            if settings.model.feature_log is not None
            else None
        )
        self._last_feature_flush = clock()
        self.scorer = Scorer(settings.policy, self.model, stage=stage)
        self.stats = Stats()
        self.source = source
        self.labels = labels
        self.labels_invalid = 0  # records of the labels topic that are not labels
        self.durable_sink = sink
        self.sink: Sink = TeeSink(sink, *also) if also else sink
        self._clock, self._wall = clock, wall
        self._stop = stop or threading.Event()
        self._last_turn = clock()
        self._last_lag_at = 0.0
        self.lag: dict[int, int] = {}
        self._snapshots = (
            SnapshotStore(
                settings.run.snapshot_dir, group=settings.kafka.group, topic=settings.kafka.topic
            )
            if settings.run.snapshot_dir is not None
            else None
        )
        self._restored: Scorer | None = None
        self._last_snapshot_at = clock()
        source.start_at = self._start_at
        served: CollectorRegistry = self.registry
        if stage == "card":
            served = Staged(CollectorRegistry(), {"card": self.registry})
        elif card is not None:
            served = Staged(self.registry, {"card": card.registry})
        self.endpoints = (
            Endpoints(
                settings.metrics.host,
                settings.metrics.port,
                served,
                health=self.health,
                ready=self.ready,
            )
            if serve
            else None
        )

    @property
    def port(self) -> int:
        """The port of /metrics, /healthz and /readyz."""
        assert self.endpoints is not None, "a service built with serve=False has no port"
        return self.endpoints.port

    # -- probes (called from the HTTP thread) -----------------------------------------------

    def health(self) -> tuple[bool, str]:
        ok, text = self._health()
        if self.card is not None and ok:
            card_ok, card_text = self.card._health()
            if not card_ok:
                return False, f"card stage: {card_text}"
        return ok, text

    def _health(self) -> tuple[bool, str]:
        idle = self._clock() - self._last_turn
        if idle > self.settings.run.stall_after:
            waited = getattr(self.durable_sink, "waiting_s", 0.0)  # KafkaSink: in an outage
            if waited >= idle - self.settings.run.stall_after:
                return True, f"waiting {waited:.0f} s for the broker to acknowledge a publish"
            return False, f"stalled: the loop has not turned for {idle:.0f} s"
        return True, "ok"

    def ready(self) -> tuple[bool, str]:
        ok, text = self._ready()
        if self.card is not None and ok and self.card.source.assignment():
            # A member beyond the cards topic's partitions holds none there: it is still ready.
            card_ok, card_text = self.card._ready()
            if not card_ok:
                return False, f"card stage {card_text}"
        return ok, text

    def _ready(self) -> tuple[bool, str]:
        assigned = self.source.assignment()
        if not assigned:
            return False, "not ready: no partition assigned"
        if not getattr(self.source, "connected", True):  # KafkaSource: a fetch answered lately
            servers = self.settings.kafka.bootstrap_servers
            return False, f"not ready: the Kafka broker at {servers} is not answering"
        if self.source.rebuilding:
            return False, "not ready: rebuilding state from the topic"
        if not assigned <= self.lag.keys():
            return False, "not ready: the lag of some partition is not known yet"
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
        if self.endpoints is not None:
            self.endpoints.start()
        try:
            run(
                self.source if self.labels is None else _TakingLabels(self, self.labels),
                self.sink,
                self.scorer,
                self.stats,
                stopping=self._stop.is_set,
                on_batch=self._after_batch,
                timer=time.perf_counter,
                raw_bytes=self.settings.run.dead_letter_raw_bytes,
                restart=self._restart,
                handoff=self.handoff,
            )
        finally:
            self.durable_sink.close()
            self.source.close()
            if self.labels is not None:
                self.labels.close()
            if self.endpoints is not None:
                self.endpoints.stop()
            self._log_features(flush=True)

    def reload_model(self) -> None:
        """Look for a new model artifact before the next batch (SIGHUP)."""
        if self._reloader is not None:
            self._reloader.request()

    def _log_features(self, *, flush: bool) -> None:
        if self._feature_log is None or self.model is None:
            return
        for rows in self.model.take_rows():
            self._feature_log.write(rows)
        if flush:
            self._feature_log.close()

    def stop(self) -> None:
        self._stop.set()

    def learn(self, read: LabelRead) -> None:
        """Hand labels to the scorer (it holds each until the watermark passes its `known_at`,
        and a label given again changes nothing) and count the records that were not labels."""
        if read.labels:
            self.scorer.learn(read.labels)
        self.labels_invalid += read.invalid

    # -- state after an assignment, and snapshots (on the polling thread) ------------------

    def _start_at(
        self, held: frozenset[int], committed: Mapping[int, int]
    ) -> Mapping[int, int] | None:
        """Read the snapshot of `held`, keep its scorer for `_restart`, and say where to read
        from; None (read from the beginning) when there is none or it cannot be trusted."""
        self._restored = None
        if self._snapshots is None or not held:
            return None
        path = self._snapshots.path(held)
        try:
            data = self._snapshots.read(held)
            if data is None:
                log.info("no snapshot %s: rebuilding the state from the beginning", path)
                self.metrics.snapshot_restores.labels(outcome="missing").inc()
                return None
            scorer, positions = loads(data, self.settings.policy, self.model, self.stage)
            if set(positions) != held:
                raise SnapshotError(f"it covers partitions {sorted(positions)}")
            ahead = {p: o for p, o in positions.items() if o > committed.get(p, 0)}
            if ahead:
                raise SnapshotError(f"it is ahead of the group's committed offsets: {ahead}")
        except (OSError, SnapshotError) as exc:
            log.warning("snapshot %s not used (%s): rebuilding from the beginning", path, exc)
            self.metrics.snapshot_restores.labels(outcome="refused").inc()
            return None
        log.info("state read from snapshot %s, at offsets %s", path, positions)
        self.metrics.snapshot_restores.labels(outcome="loaded").inc()
        self._restored = scorer
        return positions

    def _restart(self) -> Scorer:
        """The scorer for a new assignment: the snapshot's, or a new one."""
        self.scorer = self._restored or Scorer(self.settings.policy, self.model, stage=self.stage)
        self._restored = None
        self.metrics.rebase(self.scorer)
        if self.card_metrics is not None:
            self.card_metrics.rebase()
        if self.handoff is not None:  # the markers say how many partitions must speak
            count = getattr(self.source, "partitions", None)
            self.handoff.sources = max(self.handoff.sources, count() if count else 0)
        self.lag = {}  # the lag of the previous assignment says nothing now
        self._last_lag_at = 0.0
        if self.labels is not None:  # every label, before the state's first events
            self.learn(self.labels.rewind(stopping=self._stop.is_set))
        return self.scorer

    def _snapshot(self, now: float) -> None:
        """Write the state, if it is time and the source says what it covers; a failure is
        logged and counted, never raised (the next restart reads more of the topic)."""
        if (
            self._snapshots is None
            or now - self._last_snapshot_at < self.settings.run.snapshot_every
        ):
            return
        covered = self.source.covered()
        if covered is None:
            return
        self._last_snapshot_at = now
        started = time.perf_counter()
        try:
            data = dumps(self.scorer, self.settings.policy, covered)
            self._snapshots.write(covered.keys(), data)
        except (OSError, TypeError, ValueError) as exc:
            log.warning("snapshot not written: %s", exc)
            self.metrics.snapshot_writes.labels(outcome="failed").inc()
            return
        self.metrics.snapshot_writes.labels(outcome="written").inc()
        self.metrics.snapshot_seconds.set(time.perf_counter() - started)
        self.metrics.snapshot_bytes.set(len(data))

    def _after_batch(self, batch: Batch, seconds: float) -> None:
        now = self._clock()
        self._last_turn = now
        if self._reloader is not None:  # before the metrics, which then show the outcome
            self._reloader.check()
        scorer, stats = self.scorer, self.stats
        # A card stage's frontiers are its merchant stages' (from the markers).
        maxima = scorer.frontiers()
        newest = max(maxima.values()) / 1e6 if maxima else None
        self.metrics.observe_scorer(
            scorer,
            stats,
            seconds=seconds,
            newest_event_lag=(self._wall() - newest) if newest is not None and len(batch) else None,
            watermark_s=scorer.watermark.value / 1e6 if maxima else None,
            labels_invalid=self.labels_invalid,
        )
        if self.handoff is not None:
            self.metrics.observe_handoff(self.handoff.forwarded, self.handoff.markers)
        if self.card_metrics is not None and scorer.markers is not None:
            # At most a line a minute, never their content: it may be anything.
            if stats.invalid > self._invalid_logged and now - self._invalid_at >= 60.0:
                self._invalid_at = now
                log.warning(
                    "%d records of %s were neither a forwarded event nor a marker: skipped"
                    " (posmon_card_records_invalid_total); is another producer writing to it?",
                    stats.invalid - self._invalid_logged,
                    self.settings.kafka.topic,
                )
                self._invalid_logged = stats.invalid
            self.card_metrics.observe(scorer.markers.read, stats.invalid)
        stats.new_in_batch, stats.emitted_in_batch = [], []
        self._snapshot(now)
        if self._feature_log is not None:
            self._log_features(flush=False)
            if now - self._last_feature_flush >= self.settings.model.feature_log_every:
                self._last_feature_flush = now
                self._feature_log.flush()
        if now - self._last_lag_at >= _LAG_EVERY_S:
            self._last_lag_at = now
            self.lag = self.source.lag()
            self.metrics.set_consumer_lag(self.lag)
            self.metrics.observe_state(
                sizes=scorer.state_sizes(),
                rebalances=self.source.rebalances,
                watermark_delay=self._wall() - scorer.watermark.value / 1e6 if maxima else None,
                partition_delays=(
                    {p: self._wall() - t / 1e6 for p, t in maxima.items()}
                    if self.card_metrics is None
                    else None
                ),
            )
            if self.card_metrics is not None:
                self.card_metrics.delays({p: self._wall() - t / 1e6 for p, t in maxima.items()})
