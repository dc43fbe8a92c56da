"""The scoring loop's series (docs/contract.md, "Metrics"), on an explicit registry.

Counters are advanced once per batch from the scorer's own tallies, never per event (a labelled
`inc()` costs about a microsecond). No label carries a card, terminal, merchant or event id.
The dispatch loop's series are in `monitor.paging.metrics`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from prometheus_client import CollectorRegistry, Gauge, Histogram, Info
from prometheus_client import Counter as PromCounter

from monitor import __version__
from monitor.core.alerts import Alert
from monitor.core.events import KINDS, REJECT_REASONS
from monitor.scoring.attempts import IGNORE_REASONS
from monitor.scoring.pipeline import Stats
from monitor.scoring.scorer import Scorer

_BATCH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_MONEY_IDS = 100_000
_USUAL_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF", "CNY", "AUD", "CAD", "SEK", "PLN")
_LAG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The scoring loop's series. `observe_batch` brings them up to date after each batch."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.consumed = PromCounter(
            "posmon_events_consumed",
            "Events accepted and scored, by kind.",
            ["kind"],
            registry=registry,
        )
        self.rejected = PromCounter(
            "posmon_events_rejected",
            "Messages rejected to the dead-letter queue, by reason.",
            ["reason"],
            registry=registry,
        )
        self.truncated = PromCounter(
            "posmon_dead_letters_truncated",
            "Dead letters whose raw message was cut to fit (run.dead_letter_raw_bytes).",
            registry=registry,
        )
        # State snapshots (`posmon run` with run.snapshot_dir; docs/streaming.md, "Snapshots").
        self.snapshot_restores = PromCounter(
            "posmon_snapshot_restores",
            "State snapshots looked for after an assignment, by outcome (loaded, missing,"
            " refused: corrupt, other code or policy; then the state is rebuilt from the topic).",
            ["outcome"],
            registry=registry,
        )
        self.snapshot_writes = PromCounter(
            "posmon_snapshot_writes",
            "State snapshots written, or failed to write.",
            ["outcome"],
            registry=registry,
        )
        self.snapshot_seconds = Gauge(
            "posmon_snapshot_seconds",
            "Time the last state snapshot took to write (the scoring loop waits for it).",
            registry=registry,
        )
        self.snapshot_bytes = Gauge(
            "posmon_snapshot_bytes", "Size of the last state snapshot written.", registry=registry
        )
        for outcome in ("loaded", "missing", "refused"):
            self.snapshot_restores.labels(outcome=outcome)
        for outcome in ("written", "failed"):
            self.snapshot_writes.labels(outcome=outcome)
        self.duplicates = PromCounter(
            "posmon_events_duplicate",
            "Redelivered events (event_id already seen), ignored.",
            registry=registry,
        )
        self.late = PromCounter(
            "posmon_events_late",
            "Events older than the watermark when they arrived (still applied).",
            registry=registry,
        )
        self.future = PromCounter(
            "posmon_events_future",
            "Events too far ahead of their partition's newest time to move the watermark (still"
            " applied).",
            registry=registry,
        )
        self.alerts = PromCounter(
            "posmon_alerts_raised",
            "Alerts raised (new alert ids), by detector and severity.",
            ["detector", "severity"],
            registry=registry,
        )
        self.processing = Histogram(
            "posmon_processing_seconds",
            "Time to decode and score one batch.",
            buckets=_BATCH_SECONDS,
            registry=registry,
        )
        self.event_lag = Histogram(
            "posmon_event_lag_seconds",
            "Wall clock minus the newest event time of a batch, when it was scored.",
            buckets=_LAG_SECONDS,
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "posmon_consumer_lag_messages",
            "Messages behind the partition's high watermark.",
            ["partition"],
            registry=registry,
        )
        self.watermark = Gauge(
            "posmon_watermark_timestamp_seconds",
            "The event-time watermark, as a Unix time.",
            registry=registry,
        )
        self.build = Info("posmon_build", "posmon version.", registry=registry)
        self.build.info({"version": __version__})
        self.money_at_risk = PromCounter(
            "posmon_money_at_risk_minor",
            "Money debited in ghost and duplicate debits, in the currency's minor units.",
            ["detector", "currency"],
            registry=registry,
        )
        self.settlements_ignored = PromCounter(
            "posmon_settlements_ignored",
            "Reversals and refunds naming a purchase's txn_ref but not its card (or in another"
            " currency): refused for settlement, by reason; each counted once.",
            ["reason"],
            registry=registry,
        )
        self.small_attempts = PromCounter(
            "posmon_small_amount_attempts",
            "Attempts at or below the small-amount threshold (card testing watches these).",
            registry=registry,
        )
        self.rebalances = PromCounter(
            "posmon_rebalances",
            "Consumer-group rebalances this monitor went through.",
            registry=registry,
        )
        self.watermark_delay = Gauge(
            "posmon_watermark_delay_seconds",
            "Wall clock minus the event-time watermark: how far behind real time decisions run.",
            registry=registry,
        )
        self.partition_delay = Gauge(
            "posmon_partition_delay_seconds",
            "Wall clock minus the newest event time seen on each partition (a quiet or lagging"
            " partition stands out).",
            ["partition"],
            registry=registry,
        )
        self.state_entries = Gauge(
            "posmon_state_entries",
            "Entries held in each event-time store (each has a horizon and a hard cap).",
            ["store"],
            registry=registry,
        )
        self.model_score = Histogram(
            "posmon_model_score",
            "Anomaly model scores of scored events (empty until a model is loaded).",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
            registry=registry,
        )
        self.model_info = Gauge(
            "posmon_model_info",
            "The anomaly model in use, by version (no series until a model is loaded).",
            ["version"],
            registry=registry,
        )
        # Series that exist from the start: Prometheus's increase() cannot see the first step
        # of a series that appears with a value, so the first ghost debit in a currency would
        # be missing from range panels. Other currencies appear on their first debit.
        for detector in ("failed_then_debited", "duplicate_debit"):
            for currency in _USUAL_CURRENCIES:
                self.money_at_risk.labels(detector=detector, currency=currency)
        for reason in REJECT_REASONS:  # an alert on the first conflict or internal error, too
            self.rejected.labels(reason=reason)
        for reason in IGNORE_REASONS:  # and on the first forged settlement
            self.settlements_ignored.labels(reason=reason)
        self._last_ignored: Counter[str] = Counter()
        self._money_counted: dict[str, int] = {}  # alert_id -> debited_minor already counted
        self._last_small = 0
        self._last_rebalances = 0
        # Pre-bound children: labels() costs a dict lookup and a lock on every call.
        self._consumed = {kind: self.consumed.labels(kind=kind) for kind in KINDS}
        self._last_consumed: Counter[str] = Counter()
        self._last_rejected: Counter[str] = Counter()
        self._last_truncated = 0
        self._last_duplicates = 0
        self._last_late = 0
        self._last_future = 0

    def observe_batch(
        self,
        *,
        consumed: Mapping[str, int],
        rejected: Mapping[str, int],
        duplicates: int,
        late: int,
        new_alerts: list[tuple[str, str]],
        seconds: float,
        emitted: Sequence[Alert] = (),
        small_attempts: int = 0,
        truncated: int = 0,
        newest_event_lag: float | None,
        watermark_s: float | None,
        future: int = 0,
        settlements_ignored: Mapping[str, int] | None = None,
    ) -> None:
        """Advance the series by what the cumulative tallies say happened since the last call."""
        for kind, total in consumed.items():
            delta = total - self._last_consumed[kind]
            if delta:
                self._consumed[kind].inc(delta)
                self._last_consumed[kind] = total
        for reason, total in rejected.items():
            delta = total - self._last_rejected[reason]
            if delta:
                self.rejected.labels(reason=reason).inc(delta)
                self._last_rejected[reason] = total
        if truncated > self._last_truncated:
            self.truncated.inc(truncated - self._last_truncated)
            self._last_truncated = truncated
        if duplicates > self._last_duplicates:
            self.duplicates.inc(duplicates - self._last_duplicates)
            self._last_duplicates = duplicates
        if late > self._last_late:
            self.late.inc(late - self._last_late)
            self._last_late = late
        if future > self._last_future:
            self.future.inc(future - self._last_future)
            self._last_future = future
        for reason, total in (settlements_ignored or {}).items():
            delta = total - self._last_ignored[reason]
            if delta > 0:
                self.settlements_ignored.labels(reason=reason).inc(delta)
                self._last_ignored[reason] = total
        for detector, severity in new_alerts:
            self.alerts.labels(detector=detector, severity=severity).inc()
        for alert in emitted:
            self._count_money(alert)
        if small_attempts > self._last_small:
            self.small_attempts.inc(small_attempts - self._last_small)
            self._last_small = small_attempts
        self.processing.observe(seconds)
        if newest_event_lag is not None:
            self.event_lag.observe(max(0.0, newest_event_lag))
        if watermark_s is not None:
            self.watermark.set(watermark_s)

    def rebase(self, scorer: Scorer) -> None:
        """A new scorer took over (after a new assignment: fresh, or read from a snapshot):
        count from its tallies on, so the series neither go back nor count its past again."""
        self._last_consumed = Counter(scorer.consumed)
        self._last_duplicates = scorer.duplicates
        self._last_late = scorer.late
        self._last_future = scorer.watermark.future
        self._last_small = scorer.small_attempts
        self._last_ignored = Counter(scorer.attempts.ignored)

    def observe_scorer(
        self,
        scorer: Scorer,
        stats: Stats,
        *,
        seconds: float,
        newest_event_lag: float | None = None,
        watermark_s: float | None = None,
    ) -> None:
        """`observe_batch` from the scorer's and the loop's own tallies, after a batch."""
        self.observe_batch(
            consumed=scorer.consumed,
            rejected=stats.rejected,
            duplicates=scorer.duplicates,
            late=scorer.late,
            new_alerts=[(a.detector, a.severity) for a in stats.new_in_batch],
            seconds=seconds,
            emitted=stats.emitted_in_batch,
            small_attempts=scorer.small_attempts,
            truncated=stats.truncated,
            newest_event_lag=newest_event_lag,
            watermark_s=watermark_s,
            future=scorer.watermark.future,
            settlements_ignored=scorer.attempts.ignored,
        )

    def _count_money(self, alert: Alert) -> None:
        at_risk, currency = alert.amount_at_risk_minor, alert.currency
        if at_risk is None or currency is None:
            return
        delta = at_risk - self._money_counted.get(alert.alert_id, 0)
        if delta > 0:
            self.money_at_risk.labels(detector=alert.detector, currency=currency).inc(delta)
            self._money_counted[alert.alert_id] = at_risk
            if len(self._money_counted) > _MONEY_IDS:  # forget the oldest; their growth is rare
                del self._money_counted[next(iter(self._money_counted))]

    def observe_state(
        self,
        *,
        sizes: Mapping[str, int],
        rebalances: int,
        watermark_delay: float | None,
        partition_delays: Mapping[int, float] | None = None,
    ) -> None:
        """The slower-moving operator series, brought up to date about once a second."""
        for store, entries in sizes.items():
            self.state_entries.labels(store=store).set(entries)
        if rebalances > self._last_rebalances:
            self.rebalances.inc(rebalances - self._last_rebalances)
            self._last_rebalances = rebalances
        if watermark_delay is not None:
            self.watermark_delay.set(watermark_delay)
        for partition, delay in (partition_delays or {}).items():
            self.partition_delay.labels(partition=str(partition)).set(delay)

    def set_consumer_lag(self, lag: Mapping[int, int]) -> None:
        for partition, messages in lag.items():
            self.consumer_lag.labels(partition=str(partition)).set(messages)
