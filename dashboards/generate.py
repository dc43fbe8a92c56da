"""posmon's two Grafana dashboards as code: writes dashboards/pos-risk-overview.json and
dashboards/posmon-health.json with Grafana's SDK (grafana-foundation-sdk, in the test extra).

    python dashboards/generate.py            # write both files (`make dashboards`)
    python dashboards/generate.py --check    # exit 1 naming each stale file, with a short diff

The JSON files are committed (Grafana's file provisioning loads them, the tests read them) and
never edited by hand: change this file, run it, commit both. One function per section;
the panels' shapes are in panels.py beside it.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import common as viz
from grafana_foundation_sdk.builders import heatmap as heatmap_panel
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import heatmap as heatmap_model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from panels import (
    RIGHT_AXIS,
    Item,
    bargauge,
    coloured,
    colours,
    dashboard,
    fixed,
    legend,
    panel,
    query,
    render,
    row,
    stat,
    table,
    table_query,
    thresholds,
    timeseries,
    transformation,
)

HERE = Path(__file__).resolve().parent
DIFF_LINES = 40  # of each stale file's diff shown by --check

MINOR_UNITS = (
    "Amounts are integer minor units of each currency (cents for EUR and USD, but yen for JPY,"
    " which has no minor unit), so they are shown per currency and never summed across"
    " currencies; divide by 100 only for two-decimal currencies."
)
LABEL_OUTCOMES = (
    "applied (joined the model's features at its known_at), unknown_event (the purchase is"
    " not, or no longer, in the monitor's state), unknown_alert (no alert of that id in the"
    " state), no_known_at (never used), invalid (a record of the labels topic that is not a"
    " label: skipped, and logged by its coordinates), unused (no model to use it)."
)


# POS risk overview ------------------------------------------------------------------------


def risk_headline() -> list[Item]:
    return [
        stat(
            "Alerts raised (range)",
            "Number of new alerts posmon raised over the selected time range, by severity."
            " critical = ghost debits and duplicate debits (customers lost money); warning ="
            " everything else.",
            "short",
            query(
                'sum by (severity) (increase(posmon_alerts_raised_total{job="posmon"}[$__range]))',
                "{{severity}}",
            ),
        ),
        stat(
            "Money at risk (range, minor units)",
            "Money debited in ghost debits (a failed swipe that still debited the customer)"
            " and duplicate debits over the selected range, per currency. " + MINOR_UNITS,
            "suffix: minor",
            query(
                "sum by (currency)"
                ' (increase(posmon_money_at_risk_minor_total{job="posmon"}[$__range]))',
                "{{currency}}",
            ),
        ),
        stat(
            "Network error ratio (5m)",
            "Share of authorisation outcomes that were network errors over the last 5"
            " minutes: network_error / (approved + declined + network_error). A rise means"
            " terminals or the acquirer link are failing, which is when ghost debits happen.",
            "percentunit",
            query("posmon:network_error_ratio:rate5m", "network errors"),
            sparkline=True,
        ).thresholds(thresholds("green", ("orange", 0.02), ("red", 0.05))),
        stat(
            "Card-testing bursts (range)",
            "Number of small_amount_burst alerts over the selected range: a card making many"
            " attempts of small amounts in a few minutes, the usual sign that stolen card"
            " numbers are being tested.",
            "short",
            query(
                "sum(increase(posmon_alerts_raised_total"
                '{job="posmon", detector="small_amount_burst"}[$__range]))',
                "bursts",
            ),
        ),
    ]


def risk_alerts() -> list[Item]:
    return [
        timeseries(
            "Alerts raised by detector and severity",
            "New alerts per minute, one line per detector and severity (from the recording"
            " rule posmon:alerts_raised:rate5m, a 5-minute average). Each detector is"
            " described in docs/detectors.md.",
            "opm",
            query(
                "sum by (detector, severity) (posmon:alerts_raised:rate5m) * 60",
                "{{detector}} ({{severity}})",
            ),
            size=(24, 9),
            stacked=True,
        ),
    ]


def risk_money() -> list[Item]:
    return [
        timeseries(
            "Money at risk per hour by currency",
            "Money debited per hour in ghost and duplicate debits, per currency (1-hour"
            " average from posmon:money_at_risk_minor:rate1h). " + MINOR_UNITS,
            "suffix: minor/h",
            query("sum by (currency) (posmon:money_at_risk_minor:rate1h) * 3600", "{{currency}}"),
        ),
        table(
            "Money at risk by detector and currency (range)",
            "Total minor units debited over the selected range, split by detector"
            " (failed_then_debited = ghost debit, duplicate_debit = posted twice) and"
            " currency. " + MINOR_UNITS,
            "suffix: minor",
            table_query(
                "sum by (detector, currency)"
                ' (increase(posmon_money_at_risk_minor_total{job="posmon"}[$__range]))'
            ),
            size=(12, 8),
        ).with_transformation(
            transformation(
                "organize",
                excludeByName={"Time": True},
                renameByName={"Value": "minor units"},
            )
        ),
    ]


def risk_detectors() -> list[Item]:
    return [
        timeseries(
            "Ghost-debit and duplicate-debit alerts",
            "Alerts per hour from the two detectors that mean a customer lost money:"
            " failed_then_debited (the terminal said failed, the ledger debited anyway) and"
            " duplicate_debit (one purchase posted twice). Any non-zero value needs a refund"
            " decision.",
            "short",
            query(
                "sum by (detector) (posmon:alerts_raised:rate5m"
                '{detector=~"failed_then_debited|duplicate_debit"}) * 3600',
                "{{detector}} per hour",
            ),
        ),
        timeseries(
            "Card testing: small-amount attempts and bursts",
            "Small-amount authorisation attempts per second (left) and small_amount_burst"
            " alerts per hour. A burst alert means one card made many small attempts in"
            " minutes; a rise in small attempts without alerts may be testing spread over"
            " many cards.",
            "ops",
            query("posmon:small_amount_attempts:rate5m", "small-amount attempts/s"),
            query(
                'sum(posmon:alerts_raised:rate5m{detector="small_amount_burst"}) * 3600',
                "burst alerts per hour",
            ),
        ).override_by_name("burst alerts per hour", RIGHT_AXIS),
        timeseries(
            "Network error ratio",
            "network_error / (auth_approved + auth_declined + network_error) over 5 minutes."
            " Network errors that are not reversed become missing_reversal alerts, and some"
            " end as ghost debits; terminal_failure_spike alerts point to the terminals"
            " concerned.",
            "percentunit",
            query("posmon:network_error_ratio:rate5m", "network error ratio"),
            query(
                "sum(posmon:alerts_raised:rate5m"
                '{detector=~"terminal_failure_spike|missing_reversal"}) * 3600',
                "spike + missing reversal alerts per hour",
            ),
        ).override_by_query("B", RIGHT_AXIS),
        timeseries(
            "Large amounts and stale pre-authorisations",
            "Alerts per hour for single attempts above the large-amount threshold"
            " (large_amount) and for pre-authorisation holds never completed or released"
            " (stale_preauth), which keep the customer's money blocked.",
            "short",
            query(
                "sum by (detector) (posmon:alerts_raised:rate5m"
                '{detector=~"large_amount|stale_preauth"}) * 3600',
                "{{detector}} per hour",
            ),
        ),
    ]


def score_heatmap() -> heatmap_panel.Panel:
    """Scored auth requests per score bucket and time slice: Prometheus's buckets as they are."""
    builder = (
        heatmap_panel.Panel()
        .calculate(False)
        .y_axis(heatmap_panel.YAxisConfig().axis_placement(common.AxisPlacement.LEFT).unit("none"))
        .cell_gap(1)
        .color(
            heatmap_panel.HeatmapColorOptions()
            .mode(heatmap_model.HeatmapColorMode.SCHEME)
            .scheme("Oranges")
            .fill("dark-orange")
            .scale(heatmap_model.HeatmapColorScale.EXPONENTIAL)
            .exponent(0.5)
            .steps(64)
        )
        .rows_frame(heatmap_panel.RowsHeatmapOptions().layout(common.HeatmapCellLayout.AUTO))
        .tooltip(
            heatmap_panel.HeatmapTooltip().mode(common.TooltipDisplayMode.SINGLE).y_histogram(True)
        )
        .show_legend()
        .filter_values(heatmap_panel.FilterValueRange().le(1e-9))
        .max_data_points(100)
    )
    return panel(
        builder,
        "Model score distribution (live)",
        "How the live anomaly model's scores are spread over time (higher = more unusual;"
        " they lie in (0, 1], most between 0.35 and 0.8). Each column is a time slice, each"
        " cell a score bucket, colour = number of scored auth requests. A shift of mass toward"
        " high scores means traffic changed or the model drifted; model_outlier alerts come"
        " from the top buckets, above the model's threshold.",
        "none",
        query(
            "sum by (le) (increase(posmon_model_score_bucket"
            '{job="posmon", role="live"}[$__rate_interval]))',
            "{{le}}",
            fmt=PromQueryFormat.HEATMAP,
        ),
        size=(12, 8),
    )


def risk_model() -> list[Item]:
    return [
        row("Model"),
        score_heatmap(),
        timeseries(
            "Model outlier alerts per hour",
            "model_outlier alerts raised per hour (new alert ids), by severity: auth requests"
            " the live anomaly model scores above its threshold. Unlike the rules above, an"
            " outlier is unusual, not necessarily wrong: read its top features in the alert. A"
            " sudden rise with no incident behind it usually comes with drift (posmon health,"
            " Model).",
            "short",
            query(
                'sum by (severity) (posmon:alerts_raised:rate5m{detector="model_outlier"}) * 3600',
                "{{severity}}",
            ),
        ),
        timeseries(
            "Auth requests scored by the model",
            "Auth requests scored per second by the live model and by the shadow model, if one"
            " runs (recording rule posmon:model_scored:rate5m). Live should follow the"
            " auth_request throughput; zero means no model is loaded and model_outlier raises"
            " nothing.",
            "ops",
            query("posmon:model_scored:rate5m", "{{role}}"),
        ),
        timeseries(
            "Live and shadow scores (p50, p99)",
            "Median and 99th percentile of the anomaly scores over 5 minutes, live beside"
            " shadow (recording rules posmon:model_score:p50_5m/p99_5m; interpolated within"
            " score buckets 0.05 wide). Before promoting a shadow model, its p99 should sit"
            " where its threshold sends a workable number of alerts.",
            "none",
            query("posmon:model_score:p50_5m", "{{role}} p50"),
            query("posmon:model_score:p99_5m", "{{role}} p99"),
        )
        .decimals(2)
        .min(0)
        .max(1),
        timeseries(
            "Labels per hour by outcome",
            "Verdicts of the risk team (posmon label, the labels topic) taken per hour by the"
            " monitor, by what became of them: " + LABEL_OUTCOMES + " Applied verdicts feed"
            " the model's label features from their known_at on. After a restart or a"
            " rebalance every label is read again and counted again.",
            "short",
            query(
                'sum by (outcome) (rate(posmon_labels_total{job="posmon"}[$__rate_interval]))'
                " * 3600",
                "{{outcome}}",
            ),
            size=(24, 8),
        ),
    ]


def risk_overview() -> model.Dashboard:
    return dashboard(
        "posmon-risk-overview",
        "POS risk overview",
        "What the risk team looks at: alerts by detector, money at risk, ghost and duplicate"
        " debits, card testing, network errors, the anomaly model.",
        ["posmon", "risk"],
        [*risk_headline(), *risk_alerts(), *risk_money(), *risk_detectors(), *risk_model()],
    )


# posmon health ----------------------------------------------------------------------------


def health_pace() -> list[Item]:
    return [
        timeseries(
            "Throughput by event kind",
            "Events consumed and scored per second, by kind (authorisation requests and"
            " outcomes, ledger postings, pre-authorisation holds), read from the events topic"
            " (the card stage's second reading of forwarded events is under Scale-out). From"
            " posmon:events:rate5m.",
            "ops",
            query("posmon:events:rate5m", "{{kind}}"),
            stacked=True,
        ),
        timeseries(
            "Consumer lag by partition",
            "Messages waiting in Kafka that posmon has not read yet, per partition: of the"
            " events topic (kafka.topic, group kafka.group) and, with the scale-out's card"
            " stage, of its internal topic (kafka.cards_topic, group kafka.cards_group). A"
            " steadily growing line means posmon cannot keep up and alerts arrive late.",
            "short",
            query('posmon:consumer_lag_messages:max{stage!="card"}', "events: {{partition}}"),
            query('posmon:consumer_lag_messages:max{stage="card"}', "cards: {{partition}}"),
        ),
        timeseries(
            "Watermark delay",
            "Wall clock minus the event-time watermark: how far behind real time posmon's"
            " notion of 'now' is. Timers (missing reversal, stale pre-authorisation) fire only"
            " when the watermark passes them. Per partition: wall clock minus the newest event"
            " time seen there; a partition far above the others is quiet or lagging (an idle"
            " one stops holding the watermark back after kafka.idle_partition_s). The card"
            " stage follows the merchant stage's watermark through its markers: its line"
            " should stay close to the first.",
            "s",
            query(
                'max(posmon_watermark_delay_seconds{job="posmon", stage!="card"})',
                "watermark delay",
            ),
            query(
                'max(posmon_watermark_delay_seconds{job="posmon", stage="card"})',
                "card stage watermark delay",
            ),
            query('posmon:event_lag_seconds:p95_5m{stage!="card"}', "event lag p95"),
            query(
                'max by (partition) (posmon_partition_delay_seconds{job="posmon", stage!="card"})',
                "partition {{partition}}",
            ),
        ),
        timeseries(
            "Processing latency per batch",
            "Time to decode and score one batch, 50th, 95th and 99th percentiles over 5"
            " minutes (recording rules posmon:processing_seconds:p50_5m/p95_5m/p99_5m), and"
            " the card stage's own batches apart.",
            "s",
            query('posmon:processing_seconds:p50_5m{stage!="card"}', "p50"),
            query('posmon:processing_seconds:p95_5m{stage!="card"}', "p95"),
            query('posmon:processing_seconds:p99_5m{stage!="card"}', "p99"),
            query('posmon:processing_seconds:p50_5m{stage="card"}', "card stage p50"),
            query('posmon:processing_seconds:p99_5m{stage="card"}', "card stage p99"),
        ),
    ]


def health_delivery() -> list[Item]:
    return [
        timeseries(
            "Rejects, duplicates and late events",
            "Messages sent to the dead-letter queue per second by reason (not_json, schema,"
            " pan = a full card number was found), plus redelivered duplicates and late"
            " events, which are ignored or still applied respectively.",
            "ops",
            query("posmon:events_rejected:rate5m", "rejected: {{reason}}"),
            query(
                'sum(rate(posmon_events_duplicate_total{job="posmon", stage!="card"}'
                "[$__rate_interval]))",
                "duplicates",
            ),
            query(
                'sum(rate(posmon_events_late_total{job="posmon", stage!="card"}'
                "[$__rate_interval]))",
                "late",
            ),
        ),
        timeseries(
            "Deliveries by channel and outcome",
            "Notifications handed to each channel per minute, by outcome: delivered,"
            " parked_permanent (the channel refused it) or parked_deadline (retries ran out)."
            " Parked alerts never reached anyone.",
            "opm",
            query("posmon:alerts_delivered:rate5m * 60", "{{channel}} {{outcome}}"),
            stacked=True,
        ),
        timeseries(
            "Parked alerts and retries",
            "Alerts parked on the alerts dead-letter topic per hour, by channel and cause, and"
            " delivery retries per hour by channel. Parked alerts must be replayed or handled"
            " by hand.",
            "short",
            query("posmon:alerts_parked:rate5m * 3600", "parked {{channel}} ({{cause}})"),
            query(
                "sum by (channel)"
                ' (rate(posmon_delivery_retries_total{job="posmon"}[$__rate_interval])) * 3600',
                "retries {{channel}}",
            ),
        ),
        timeseries(
            "Oldest undelivered alert and delivery latency",
            "Age of the oldest alert the dispatch loop holds but has not delivered or parked"
            " (0 when none), and the 95th percentile delivery time by channel.",
            "s",
            query(
                'max(posmon_dispatch_oldest_undelivered_seconds{job="posmon"})',
                "oldest undelivered",
            ),
            query("posmon:delivery_seconds:p95_5m", "delivery p95 {{channel}}"),
        ),
        timeseries(
            "Dispatch: alerts withheld",
            "Alerts not paged per minute, by reason: inhibited (a bigger alert covers it),"
            " duplicate (already sent) or folded (summarised into a storm message).",
            "opm",
            query(
                "sum by (reason)"
                ' (rate(posmon_dispatch_withheld_total{job="posmon"}[$__rate_interval])) * 60',
                "{{reason}}",
            ),
        ),
    ]


def health_instances() -> list[Item]:
    return [
        timeseries(
            "State sizes",
            "Entries held in memory by each state store (attempts, dedup_ids, timers,"
            " held_back, preauth_holds), the card stage's apart. Steady growth without a"
            " plateau means state is not being expired.",
            "short",
            query(
                'sum by (store) (posmon_state_entries{job="posmon", stage!="card"})', "{{store}}"
            ),
            query(
                'sum by (store) (posmon_state_entries{job="posmon", stage="card"})',
                "card stage: {{store}}",
            ),
        ),
        bargauge(
            "Consumer group rebalances (range)",
            "Kafka consumer group rebalances over the selected range, of the events group and"
            " of the card stage's group. Each one pauses consumption briefly and rebuilds the"
            " state; frequent rebalances point to crashing or slow instances.",
            "short",
            query(
                "sum by (instance)"
                ' (increase(posmon_rebalances_total{job="posmon", stage!="card"}[$__range]))',
                "{{instance}}",
            ),
            query(
                "sum by (instance)"
                ' (increase(posmon_rebalances_total{job="posmon", stage="card"}[$__range]))',
                "{{instance}} (card stage)",
            ),
            size=(8, 6),
        ),
        table(
            "Build and model versions",
            "Which posmon version and which anomaly model version each instance runs (value 1"
            " = running). Two versions at once means a rollout is in progress.",
            "none",
            table_query('posmon_build_info{job="posmon"}'),
            table_query('posmon_model_info{job="posmon"}'),
            size=(16, 6),
        )
        .with_transformation(transformation("merge"))
        .with_transformation(
            transformation(
                "organize",
                excludeByName={"Time": True, "Value #A": True, "Value #B": True, "__name__": False},
            )
        ),
    ]


CARD_STAGE_BEHIND = 300  # s: PosmonCardStageBehind (dashboards/prometheus/alerting.rules.yml)


def health_scaleout() -> list[Item]:
    """The two stages of `posmon run` and the internal topic between them (docs/streaming.md,
    "Scale-out"): the merchant stage's series carry no `stage` label, the card stage's
    stage="card"."""
    behind = (
        'max by (job, partition) (posmon_card_source_delay_seconds{job="posmon"})'
        " - on (job, partition) min by (job, partition)"
        ' (posmon_partition_delay_seconds{job="posmon", stage!="card"})'
    )
    return [
        row("Scale-out"),
        timeseries(
            "Forwarded events and markers",
            "Per second: events the merchant stage hands the card stage on kafka.cards_topic"
            " (auth requests at or below small_amount_burst's max_amount_minor; with a model,"
            " every request and outcome), events the card stage reads back, and the watermark"
            " markers the merchant stage publishes (to every partition of the topic, after"
            " each batch) and the card stage reads. Read should follow forwarded and published;"
            " a gap that lasts is the card group's lag. Empty with run.stage all.",
            "ops",
            query(
                'sum(rate(posmon_forwarded_events_total{job="posmon"}[$__rate_interval]))',
                "forwarded events",
            ),
            query(
                'sum(rate(posmon_events_consumed_total{job="posmon", stage="card"}'
                "[$__rate_interval]))",
                "events read by the card stage",
            ),
            query(
                'sum(rate(posmon_markers_published_total{job="posmon"}[$__rate_interval]))',
                "markers published",
            ),
            query(
                'sum(rate(posmon_card_markers_total{job="posmon"}[$__rate_interval]))',
                "markers read",
            ),
        ),
        timeseries(
            "Card stage delay by source partition",
            "Per partition of the events topic: wall clock minus the newest event time the"
            " card stage knows there (from the markers), and how far that is behind the"
            " merchant stage's own delay on the partition, at most over partitions. A quiet"
            " partition raises both delays alike; the second line rising means the card stage"
            " decides late (PosmonCardStageBehind fires above 5 minutes for 10 minutes).",
            "s",
            query(
                'max by (partition) (posmon_card_source_delay_seconds{job="posmon"})',
                "partition {{partition}}",
            ),
            query(f"max({behind})", "behind the merchant stage"),
        )
        .thresholds(thresholds("green", ("red", CARD_STAGE_BEHIND)))
        .override_by_name(
            "behind the merchant stage",
            [model.DynamicConfigValue(id_val="custom.thresholdsStyle", value={"mode": "dashed"})],
        ),
        timeseries(
            "Consumer lag of both groups",
            "Messages not yet read, summed over partitions: the events group (kafka.group, on"
            " kafka.topic) and the card stage's group (kafka.cards_group, on"
            " kafka.cards_topic). The chart's autoscaling adds replicas on either; each group"
            " has at most as many busy members as its topic has partitions.",
            "short",
            query('sum(posmon_consumer_lag_messages{job="posmon", stage!="card"})', "events group"),
            query('sum(posmon_consumer_lag_messages{job="posmon", stage="card"})', "card group"),
            size=(16, 7),
        ),
        stat(
            "Invalid internal records (range)",
            "Records of kafka.cards_topic the card stage skipped over the selected range:"
            " neither a forwarded event nor a marker. Anything above zero means another"
            " producer writes to the topic or the two stages run builds that disagree on its"
            " records (PosmonCardRecordsInvalid).",
            "short",
            query(
                'sum(increase(posmon_card_records_invalid_total{job="posmon"}[$__range]))',
                "invalid records",
            ),
            size=(8, 7),
        )
        .decimals(0)
        .thresholds(thresholds("green", ("red", 1))),
    ]


def health_model() -> list[Item]:
    return [
        row("Model"),
        stat(
            "Model in use (live and shadow)",
            "The anomaly model versions this monitor scores with: live (its scores raise"
            " model_outlier alerts) and shadow (scored alongside for comparison, never"
            " alerts). No value: no model is loaded and model_outlier does not run. Two live"
            " versions at once means instances disagree (a rollout in progress, or a reload"
            " refused on some).",
            "none",
            query(
                'max by (role, version) (posmon_model_info{job="posmon"})',
                "{{role}}: {{version}}",
                instant=True,
            ),
            size=(6, 8),
        )
        .color_mode(common.BigValueColorMode.NONE)
        .text_mode(common.BigValueTextMode.NAME)
        .orientation(common.VizOrientation.HORIZONTAL),
        timeseries(
            "Model scoring latency per batch",
            "Time to compute the features' scores of one batch with the anomaly model (live"
            " and shadow each count as a batch), 50th and 99th percentiles over 5 minutes"
            " (recording rules posmon:model_scoring_seconds:p50_5m/p99_5m). Part of the"
            " processing latency above; empty while no model is loaded.",
            "s",
            query("posmon:model_scoring_seconds:p50_5m", "p50"),
            query("posmon:model_scoring_seconds:p99_5m", "p99"),
            size=(9, 8),
        ),
        bargauge(
            "Model reloads by outcome (range)",
            "Anomaly model reloads over the selected range: loaded (the new model went live),"
            " or refused and the model in use stayed: refused_mismatch (trained on other"
            " features than this posmon computes), refused_parity (its parity vectors do not"
            " score as its card says), refused_unreadable (missing, too large or corrupt"
            " files, or arrays that do not match the card's SHA-256). Any refusal raises"
            " PosmonModelReloadRefused.",
            "short",
            query(
                'sum by (outcome) (increase(posmon_model_reload_total{job="posmon"}[$__range]))',
                "{{outcome}}",
                instant=True,
            ),
            size=(9, 8),
            basic=True,
        )
        .decimals(0)
        .color_scheme(fixed("red"))
        .override_by_name("loaded", coloured("green")),
        *drift(),
        bargauge(
            "Labels by outcome (range)",
            "The risk team's verdicts read from the labels topic (posmon label) over the"
            " selected range, by what became of them: " + LABEL_OUTCOMES + " Invalid labels"
            " point at a producer writing something else to the topic; many unknown_event"
            " labels at verdicts on purchases older than the state keeps, or on ids from"
            " another system.",
            "short",
            query(
                'sum by (outcome) (increase(posmon_labels_total{job="posmon"}[$__range]))',
                "{{outcome}}",
                instant=True,
            ),
            size=(24, 7),
            basic=True,
        )
        .decimals(0)
        .color_scheme(fixed("orange"))
        .override_by_name("applied", coloured("green"))
        .override_by_name("invalid", coloured("red")),
    ]


def drift() -> list[Item]:
    """Drift, now and over time, coloured at the PSI where PosmonModelDrift (0.1) and
    PosmonModelDriftSevere (0.25) fire (dashboards/prometheus/alerting.rules.yml)."""
    levels = thresholds("green", ("orange", 0.1), ("red", 0.25))
    return [
        bargauge(
            "Drift by feature, now (PSI)",
            "Population stability index of each model feature, and of the score itself"
            " (score), over a sliding window of event time (a day by default) against the"
            " distribution recorded in the model's card, highest first. Below 0.1 (green) the"
            " traffic looks like what the model learnt; 0.1 to 0.25 (orange) it is drifting"
            " (PosmonModelDrift warns after 30 minutes); above 0.25 (red) it has drifted"
            " (PosmonModelDriftSevere pages after 15 minutes).",
            "none",
            query(
                'sort_desc(max by (feature) (posmon_model_drift_psi{job="posmon"}))',
                "{{feature}}",
                instant=True,
            ),
            size=(10, 14),
        )
        .decimals(3)
        .min(0)
        .max(0.5)
        .color_scheme(colours(model.FieldColorModeId.THRESHOLDS))
        .thresholds(levels),
        timeseries(
            "Drift by feature over time (PSI)",
            "Population stability index of each model feature (and of the score) over time,"
            " against the thresholds 0.1 (drifting) and 0.25 (drifted). A single feature"
            " rising points at a change in one part of the feed (a new terminal fleet, a"
            " currency, a clock); everything rising at once is a change of traffic, and the"
            " model wants retraining.",
            "none",
            query('max by (feature) (posmon_model_drift_psi{job="posmon"})', "{{feature}}"),
            size=(14, 14),
        )
        .decimals(3)
        .min(0)
        .color_scheme(colours(model.FieldColorModeId.PALETTE_CLASSIC))
        .thresholds(levels)
        .thresholds_style(
            viz.GraphThresholdsStyleConfig().mode(common.GraphThresholdsStyleMode.LINE_AND_AREA)
        )
        .legend(legend("lastNotNull", "max", right=True).sort_by("Last *").sort_desc(True)),
    ]


def health() -> model.Dashboard:
    return dashboard(
        "posmon-health",
        "posmon health",
        "Is posmon keeping up and getting its alerts delivered? Throughput, lag, watermark,"
        " latency, rejects, delivery, state, the scale-out's two stages, and the anomaly"
        " model.",
        ["posmon", "health"],
        [
            *health_pace(),
            *health_delivery(),
            *health_instances(),
            *health_scaleout(),
            *health_model(),
        ],
    )


# -------------------------------------------------------------------------------------------

DASHBOARDS: dict[str, Callable[[], model.Dashboard]] = {
    "pos-risk-overview.json": risk_overview,
    "posmon-health.json": health,
}


def _diff(name: str, old: str, new: str) -> str:
    lines = list(
        difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            f"dashboards/{name} (committed)",
            f"dashboards/{name} (generated)",
            n=1,
        )
    )
    shown = "".join(lines[:DIFF_LINES])
    more = len(lines) - DIFF_LINES
    return shown + (f"... ({more} more diff lines)\n" if more > 0 else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file is stale"
    )
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        text = render(build())
        old = path.read_text(encoding="utf-8") if path.exists() else ""
        if old == text:
            if not args.check:
                print(f"dashboards/{name} unchanged")
            continue
        if args.check:
            stale.append(name)
            sys.stdout.write(_diff(name, old, text))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote dashboards/{name}")
    if stale:
        print(
            f"stale: {', '.join(f'dashboards/{name}' for name in stale)}; regenerate with"
            " `make dashboards` (python dashboards/generate.py) and commit the JSON",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
