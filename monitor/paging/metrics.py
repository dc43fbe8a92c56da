"""The dispatch loop's series (docs/contract.md, "Metrics"), on an explicit registry."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client import Counter as PromCounter

OUTCOMES = ("delivered", "parked_permanent", "parked_deadline")
CAUSES = ("permanent", "deadline")
# Why an alert was not paged: muted by an inhibition source, already said (dedup), folded into
# a storm summary, or taken by no route (a configuration without a default route).
WITHHELD = ("inhibited", "duplicate", "folded", "unrouted", "stale")


class DispatchMetrics:
    """The dispatch loop's series: deliveries by channel and outcome, their latency, retries,
    parked alerts, the decisions that kept a page back, and the oldest undelivered alert.

    Every series of every configured channel exists from the start, at zero: a rate over a
    counter that appears with its first parking misses that parking, and a rule cannot fire on
    a series that is absent. Create them before the loop starts, so they are served even if it
    never does."""

    def __init__(self, registry: CollectorRegistry, channels: Iterable[str] = ()) -> None:
        self.delivered = PromCounter(
            "posmon_alerts_delivered",
            "Notifications handed to a channel, by channel and outcome"
            " (delivered, parked_permanent, parked_deadline).",
            ["channel", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "posmon_delivery_seconds",
            "Time from the first delivery attempt to the channel's acceptance or the parking.",
            ["channel"],
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600),
            registry=registry,
        )
        self.retries = PromCounter(
            "posmon_delivery_retries",
            "Delivery attempts after the first, by channel.",
            ["channel"],
            registry=registry,
        )
        self.parked = PromCounter(
            "posmon_alerts_parked",
            "Alerts parked on the alerts dead-letter topic, by channel and cause.",
            ["channel", "cause"],
            registry=registry,
        )
        self.withheld = PromCounter(
            "posmon_dispatch_withheld",
            "Alerts not paged, by reason (inhibited, duplicate, folded into a storm summary,"
            " unrouted).",
            ["reason"],
            registry=registry,
        )
        self.oldest = Gauge(
            "posmon_dispatch_oldest_undelivered_seconds",
            "Age of the oldest alert received but not yet delivered or parked (0 when none).",
            registry=registry,
        )
        for reason in WITHHELD:
            self.withheld.labels(reason=reason)
        for channel in channels:
            self.latency.labels(channel=channel)
            self.retries.labels(channel=channel)
            for outcome in OUTCOMES:
                self.delivered.labels(channel=channel, outcome=outcome)
            for cause in CAUSES:
                self.parked.labels(channel=channel, cause=cause)
