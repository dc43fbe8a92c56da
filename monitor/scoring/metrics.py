"""The scoring loop's series (docs/contract.md, "Metrics"), on an explicit registry.

Counters are advanced once per batch from the scorer's own tallies, never per event (a labelled
`inc()` costs about a microsecond). The anomaly model's scores are likewise counted into their
histogram per batch with numpy (`_observe_all`), not one `observe()` per score. No label carries
a card, terminal, merchant or event id. The dispatch loop's series are in
`monitor.paging.metrics`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Gauge, Histogram, Info
from prometheus_client import Counter as PromCounter

from monitor import __version__
from monitor.core.alerts import Alert
from monitor.core.events import KINDS, REJECT_REASONS
from monitor.scoring.attempts import IGNORE_REASONS
from monitor.scoring.pipeline import Stats
from monitor.scoring.scorer import Scorer
from monitor.scoring.tally import LABEL_OUTCOMES, RELOAD_OUTCOMES, ModelTally, Scores

_BATCH_SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_MONEY_IDS = 100_000
_USUAL_CURRENCIES = ("EUR", "USD", "GBP", "JPY", "CHF", "CNY", "AUD", "CAD", "SEK", "PLN")
_LAG_SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
# IsolationForest scores lie in (0, 1], most of them between 0.35 and 0.8.
_SCORES = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 1.0)
_SCORING_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)
ROLES = ("live", "shadow")


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
        # The scale-out (docs/streaming.md, "Scale-out"): what a merchant stage hands on.
        self.forwarded = PromCounter(
            "posmon_forwarded_events",
            "Events the merchant stage handed to the card stage (kafka.cards_topic).",
            registry=registry,
        )
        self.markers_published = PromCounter(
            "posmon_markers_published",
            "Watermark markers the merchant stage published (one per cards partition).",
            registry=registry,
        )
        self._last_forwarded = self._last_markers = 0
        self._add_model_series(registry)
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

    def _add_model_series(self, registry: CollectorRegistry) -> None:
        """The anomaly model's series (`model_outlier`), brought up to date by `observe_model`:
        every role's scores and every reload outcome exist from the start, at zero."""
        self.model_score = Histogram(
            "posmon_model_score",
            "Anomaly model scores of scored auth requests, by role (live, shadow); higher is more"
            " anomalous.",
            ["role"],
            buckets=_SCORES,
            registry=registry,
        )
        self.model_info = Gauge(
            "posmon_model_info",
            "The anomaly model in use (1), by version and role (live, shadow); no series for a"
            " role without a model.",
            ["version", "role"],
            registry=registry,
        )
        self.model_scoring_seconds = Histogram(
            "posmon_model_scoring_seconds",
            "Time to score one batch of auth requests with the anomaly model (live or shadow).",
            buckets=_SCORING_SECONDS,
            registry=registry,
        )
        self.model_reloads = PromCounter(
            "posmon_model_reload",
            "Anomaly model reloads, by outcome (loaded, or refused: the model in use stays).",
            ["outcome"],
            registry=registry,
        )
        self.model_drift = Gauge(
            "posmon_model_drift_psi",
            "Population stability index of each model feature (and of the score) over the drift"
            " window against the live model's card (its training data): above 0.1 drifting,"
            " above 0.25 drifted.",
            ["feature"],
            registry=registry,
        )
        self.model_scored = PromCounter(
            "posmon_model_scored",
            "Auth requests scored by the anomaly model, by role (live, shadow).",
            ["role"],
            registry=registry,
        )
        # The risk team's verdicts (the labels topic): what became of each, running totals from
        # the scorer's tallies (`labels_<outcome>`) and the labels source's `invalid` count.
        self.label_outcomes = PromCounter(
            "posmon_labels",
            "Labels (the risk team's verdicts) by what became of them: applied to the model's"
            " features, unknown_event, unknown_alert, no_known_at, invalid (not a label), unused"
            " (no model to use them).",
            ["outcome"],
            registry=registry,
        )
        for outcome in LABEL_OUTCOMES:
            self.label_outcomes.labels(outcome=outcome)
        self._last_labels: Counter[str] = Counter()
        self._scores = {role: self.model_score.labels(role=role) for role in ROLES}
        self._scored = {role: self.model_scored.labels(role=role) for role in ROLES}
        for outcome in RELOAD_OUTCOMES:
            self.model_reloads.labels(outcome=outcome)
        # The model slot (and its tally) outlives a scorer swapped in by `rebase`: its reload
        # totals run on, and are counted from zero only for another tally.
        self._tally: ModelTally | None = None
        self._last_reloads: Counter[str] = Counter()
        self._versions: dict[str, str] = {}  # role -> the version posmon_model_info shows
        self._drift: dict[str, Gauge] = {}  # feature -> its child, while the tally has it
        self._psi: dict[str, float] = {}  # as last shown

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
        labels: Mapping[str, int] | None = None,
    ) -> None:
        """Advance the series by what the cumulative tallies say happened since the last call
        (`labels`: running totals by outcome)."""
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
        for outcome, total in (labels or {}).items():
            delta = total - self._last_labels[outcome]
            if delta > 0:
                self.label_outcomes.labels(outcome=outcome).inc(delta)
                self._last_labels[outcome] = total
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
        invalid = self._last_labels["invalid"]  # the source's count: it runs on
        self._last_labels = Counter(_label_tallies(scorer.tallies()))
        self._last_labels["invalid"] = invalid

    def observe_scorer(
        self,
        scorer: Scorer,
        stats: Stats,
        *,
        seconds: float,
        newest_event_lag: float | None = None,
        watermark_s: float | None = None,
        labels_invalid: int = 0,
    ) -> None:
        """`observe_batch` from the scorer's and the loop's own tallies, after a batch;
        `labels_invalid`: the running count of records of the labels topic that are not labels."""
        tallies = scorer.tallies()
        self.observe_batch(
            consumed=scorer.consumed,
            rejected=stats.rejected,
            duplicates=scorer.duplicates,
            late=scorer.late,
            new_alerts=[(a.detector, a.severity) for a in stats.new_in_batch],
            seconds=seconds,
            emitted=stats.emitted_in_batch,
            small_attempts=tallies.get("small_attempts", 0),
            truncated=stats.truncated,
            newest_event_lag=newest_event_lag,
            watermark_s=watermark_s,
            future=scorer.watermark.future,
            settlements_ignored=scorer.attempts.ignored,
            labels={**_label_tallies(tallies), "invalid": labels_invalid},
        )
        self.observe_model(scorer.model_tally)

    def observe_model(self, tally: ModelTally | None) -> None:
        """The model's series from its tally (None: no model), after a batch: the scores and
        scoring times since the last call (drained from the tally), reloads, versions, drift."""
        if tally is not None:
            if tally is not self._tally:  # another slot: its running totals start from zero
                self._tally, self._last_reloads = tally, Counter()
            scores, shadow_scores, seconds = tally.drain()
            for role, batches in (("live", scores), ("shadow", shadow_scores)):
                if batches:
                    values = np.concatenate(batches) if len(batches) > 1 else batches[0]
                    _observe_all(self._scores[role], values)
                    self._scored[role].inc(len(values))
            for spent in seconds:  # one or two a batch
                self.model_scoring_seconds.observe(spent)
            for outcome, total in tally.reloads.items():
                delta = total - self._last_reloads[outcome]
                if delta > 0:
                    self.model_reloads.labels(outcome=outcome).inc(delta)
                    self._last_reloads[outcome] = total
        self._show_versions(
            {} if tally is None else {"live": tally.version, "shadow": tally.shadow_version}
        )
        self._show_drift({} if tally is None else tally.psi)

    def _show_versions(self, versions: Mapping[str, str | None]) -> None:
        """`posmon_model_info` shows the version in use of each role, and only that one."""
        for role in ROLES:
            version, shown = versions.get(role), self._versions.get(role)
            if version == shown:
                continue
            if shown is not None:  # a reload, or the model is gone
                self.model_info.remove(shown, role)
                del self._versions[role]
            if version is not None:
                self.model_info.labels(version=version, role=role).set(1)
                self._versions[role] = version

    def _show_drift(self, psi: Mapping[str, float]) -> None:
        """`posmon_model_drift_psi` of each feature the tally has (no series for the others)."""
        if psi == self._psi:  # the detector updates it now and then, not every batch
            return
        self._psi = dict(psi)
        for feature, value in psi.items():
            gauge = self._drift.get(feature)
            if gauge is None:
                gauge = self._drift[feature] = self.model_drift.labels(feature=feature)
            gauge.set(value)
        for feature in [f for f in self._drift if f not in psi]:  # gone with its model
            self.model_drift.remove(feature)
            del self._drift[feature]

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

    def observe_handoff(self, forwarded: int, markers: int) -> None:
        """A merchant stage's running totals of events forwarded and markers published."""
        if forwarded > self._last_forwarded:
            self.forwarded.inc(forwarded - self._last_forwarded)
            self._last_forwarded = forwarded
        if markers > self._last_markers:
            self.markers_published.inc(markers - self._last_markers)
            self._last_markers = markers

    def set_consumer_lag(self, lag: Mapping[int, int]) -> None:
        for partition, messages in lag.items():
            self.consumer_lag.labels(partition=str(partition)).set(messages)


def _label_tallies(tallies: Mapping[str, int]) -> dict[str, int]:
    """The scorer's label outcomes (`labels_<outcome>`), by outcome; `invalid` is not its own."""
    return {
        outcome: tallies.get(f"labels_{outcome}", 0)
        for outcome in LABEL_OUTCOMES
        if outcome != "invalid"
    }


def _observe_all(histogram: Histogram, values: Scores) -> None:
    """`histogram.observe(v)` for every v, counted with numpy: prometheus_client keeps one
    counter per upper bound (`le`, inclusive: v <= bound) that it sums into the cumulative
    buckets when scraped, and a sum. A batch holds hundreds of scores and an `observe()` costs
    about a microsecond; this costs a few for the whole batch. NaN is not counted (`observe`
    would make the sum NaN for good)."""
    values = values[~np.isnan(values)]
    if not len(values):
        return
    bounds = np.asarray(histogram._upper_bounds)  # ascending, +Inf last
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))
    for bucket, count in zip(histogram._buckets, counts.tolist(), strict=True):
        if count:
            bucket.inc(count)
    histogram._sum.inc(float(values.sum()))


class CardMetrics:
    """A card stage's own series (beside `Metrics`, which it has too): the markers it read, how
    far its clock is behind each events partition, and records of the cards topic it could not
    use."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.markers = PromCounter(
            "posmon_card_markers",
            "Watermark markers the card stage read from kafka.cards_topic.",
            registry=registry,
        )
        self.invalid = PromCounter(
            "posmon_card_records_invalid",
            "Records of kafka.cards_topic that are neither a forwarded event nor a marker.",
            registry=registry,
        )
        self.source_delay = Gauge(
            "posmon_card_source_delay_seconds",
            "Wall clock minus the newest event time the card stage knows of each partition of"
            " the events topic (from the markers).",
            ["partition"],
            registry=registry,
        )
        self._last_markers = self._last_invalid = 0

    def observe(self, markers: int, invalid: int) -> None:
        """Running totals (a new state's markers count from zero: `rebase`)."""
        if markers > self._last_markers:
            self.markers.inc(markers - self._last_markers)
        if invalid > self._last_invalid:
            self.invalid.inc(invalid - self._last_invalid)
        self._last_markers, self._last_invalid = markers, invalid

    def rebase(self) -> None:
        self._last_markers = 0

    def delays(self, delays: Mapping[int, float]) -> None:
        for partition, delay in delays.items():
            self.source_delay.labels(partition=str(partition)).set(delay)
