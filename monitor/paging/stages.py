"""The paging pipeline: the stages between an alert on the topic and a page on a channel.

Composed once, as data, in `compose` (the way Alertmanager builds its stage list), and run by
the dispatcher for every page: a group's flush (`Groups.due`) and every resolve alike.

    inhibit -> dedup against the ledger -> storm limit -> for each channel: deliver, record

Each stage takes the `Page` and the dispatcher's `now` (epoch seconds; only the entry layer
reads the clock), narrows what the page still has to say, and answers False when nothing is left
to do. What a stage keeps back it counts by reason (`DispatchStats`, the
`posmon_dispatch_withheld_total{reason}` series), so a page that was not sent is never silent.
Grouping comes before the stages (`Groups.add` on receipt, `Groups.due` on the tick).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from monitor.core.alerts import Alert
from monitor.paging.delivery import Delivered, Deliverer, Interrupted, Parked, Result
from monitor.paging.inhibition import Inhibitor
from monitor.paging.ledger import Ledger, dedup
from monitor.paging.metrics import DispatchMetrics
from monitor.paging.notification import Channel, Kind, Notification
from monitor.paging.routing import Route
from monitor.paging.storm import StormLimiter


@dataclass
class DispatchStats:
    """What the dispatcher did, for its log line at shutdown and the tests."""

    received: int = 0
    invalid: int = 0
    delivered: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    parked: int = 0
    summaries: int = 0
    withheld: Counter[str] = field(default_factory=Counter)  # alerts kept back, by reason
    decisions: Counter[str] = field(default_factory=Counter)  # dedup's reasons, per channel
    flushes: Counter[str] = field(default_factory=Counter)  # group flushes by reason

    @property
    def inhibited(self) -> int:
        return self.withheld["inhibited"]

    @property
    def duplicates(self) -> int:
        return self.withheld["duplicate"]

    @property
    def folded(self) -> int:
        return self.withheld["folded"]


class Outbox(Protocol):
    """Where the dispatcher writes durably: ledger records and parked alerts."""

    def record(self, records: Sequence[dict[str, object]]) -> None: ...

    def park(self, parked: Sequence[dict[str, object]]) -> None: ...

    def forget(self, keys: Sequence[tuple[str, str]]) -> None: ...


@dataclass(slots=True)
class Page:
    """One notification's worth on its way through the stages.

    A trigger page is a group's flush (`key` is the group key, `route` its route); a resolve page
    tells the channels that heard of one alert that its incident ended (`key` is the alert id).
    `channels` are the channels to consider, in order; `to` is filled by dedup with what each
    must hear.
    """

    kind: Kind
    key: str
    route: Route | None
    channels: tuple[str, ...]
    alerts: list[Alert]
    to: dict[str, list[Alert]] = field(default_factory=dict)
    interrupted: bool = False  # the process is stopping: the page's alerts stay unsettled


class Stage(Protocol):
    def __call__(self, page: Page, now: float) -> bool:
        """Narrow the page; False when nothing is left to do."""
        ...


class ChannelStage(Protocol):
    def __call__(self, page: Page, channel: str, result: Result | None, now: float) -> Result:
        """Act for one channel of the page; returns the delivery's result."""
        ...


@dataclass(frozen=True, slots=True)
class Tally:
    """Where the stages count their decisions: what they keep back by reason (the stats and the
    `posmon_dispatch_withheld_total{reason}` series), and dedup's reasons per channel."""

    stats: DispatchStats
    metrics: DispatchMetrics | None

    def withhold(self, reason: str) -> None:
        self.stats.withheld[reason] += 1
        if self.metrics is not None:
            self.metrics.withheld.labels(reason=reason).inc()

    def decided(self, reasons: Iterable[str]) -> None:
        self.stats.decisions.update(reasons)


@dataclass(frozen=True, slots=True)
class Inhibit:
    """Drops the alerts a source alert mutes (checked at flush time, after `group_wait`, so a
    spike arriving a little after its missing_reversal alerts still mutes them)."""

    inhibitor: Inhibitor
    tally: Tally

    def __call__(self, page: Page, now: float) -> bool:
        if page.kind == "resolve":
            return True
        kept = []
        for alert in page.alerts:
            if self.inhibitor.inhibited(alert) is None:
                kept.append(alert)
            else:
                self.tally.withhold("inhibited")
        page.alerts = kept
        return bool(kept)


@dataclass(frozen=True, slots=True)
class Dedup:
    """Asks the ledger, per channel, whether each alert is new, grew, is due a repeat (or, for a
    resolve, was heard of) or was already said; an alert no channel needs is dropped."""

    ledger: Ledger
    tally: Tally

    def __call__(self, page: Page, now: float) -> bool:
        repeat = page.route.repeat_interval if page.route is not None else 0.0
        to: dict[str, list[Alert]] = {name: [] for name in page.channels}
        kept = []
        for alert in page.alerts:
            decisions = {
                name: dedup(self.ledger, alert, name, now, repeat, kind=page.kind)
                for name in page.channels
            }
            if page.kind == "trigger":
                self.tally.decided(d.reason for d in decisions.values())
            if not any(d.notify for d in decisions.values()):
                if page.kind == "trigger":
                    self.tally.withhold("duplicate")
                continue
            kept.append(alert)
            for name, decision in decisions.items():
                if decision.notify:
                    to[name].append(alert)
        page.alerts, page.to = kept, to
        return bool(kept)


@dataclass(frozen=True, slots=True)
class StormLimit:
    """Admits each alert with something to say through its route's storm limit (after dedup,
    so redeliveries spend no budget); the excess folds into one summary per interval (of the
    alerts' event time: `StormLimiter`)."""

    storm: StormLimiter
    tally: Tally

    def __call__(self, page: Page, now: float) -> bool:
        if page.kind == "resolve" or page.route is None:
            return True  # resolves only reduce noise
        kept, folded = [], set()
        for alert in page.alerts:
            if self.storm.admit(page.route, alert, now).notify:
                kept.append(alert)
            else:
                self.tally.withhold("folded")
                folded.add(alert.alert_id)
        if folded:
            page.to = {
                name: [a for a in alerts if a.alert_id not in folded]
                for name, alerts in page.to.items()
            }
        page.alerts = kept
        return bool(kept)


@dataclass(frozen=True, slots=True)
class Deliver:
    """Hands a notification to a channel with retries (`Deliverer`) and counts the outcome."""

    channels: Mapping[str, Channel]
    deliverer: Deliverer
    stats: DispatchStats
    metrics: DispatchMetrics | None
    clock: Callable[[], float]  # for the delivery latency only

    def __call__(self, page: Page, channel: str, result: Result | None, now: float) -> Result:
        return self.send(channel, Notification(page.kind, tuple(page.to[channel]), page.key))

    def send(self, channel: str, note: Notification) -> Result:
        started = self.clock()
        result = self.deliverer.deliver(self.channels[channel], note)
        if self.metrics is not None and not isinstance(result, Interrupted):
            outcome = f"parked_{result.cause}" if isinstance(result, Parked) else "delivered"
            self.metrics.delivered.labels(channel=channel, outcome=outcome).inc()
            self.metrics.latency.labels(channel=channel).observe(self.clock() - started)
            if result.attempts > 1:
                self.metrics.retries.labels(channel=channel).inc(result.attempts - 1)
            if isinstance(result, Parked):
                self.metrics.parked.labels(channel=channel, cause=result.cause).inc(
                    len(note.alerts)
                )
        if isinstance(result, Delivered):
            self.stats.delivered[(channel, "delivered")] += 1
        elif isinstance(result, Parked):
            self.stats.parked += 1
            self.stats.delivered[(channel, f"parked_{result.cause}")] += 1
        return result


@dataclass(frozen=True, slots=True)
class Record:
    """Writes down durably what a channel accepted (the ledger, so dedup survives a restart)
    or parks what it could not (the alerts dead-letter topic, with the reason)."""

    ledger: Ledger
    outbox: Outbox

    def __call__(self, page: Page, channel: str, result: Result | None, now: float) -> Result:
        assert result is not None, "record runs after deliver"
        alerts = page.to[channel]
        if isinstance(result, Delivered):
            self.outbox.record([self.ledger.note(a, channel, page.kind, now) for a in alerts])
        elif isinstance(result, Parked):
            self.outbox.park(
                [
                    {
                        "reason": result.reason,
                        "channel": channel,
                        "alert": a.model_dump(mode="json"),
                    }
                    for a in alerts
                ]
            )
        return result


@dataclass(frozen=True, slots=True)
class FanOut:
    """Runs the channel stages for every channel that has something to hear, in order; stops
    the page when a delivery is interrupted (the process is stopping)."""

    stages: tuple[ChannelStage, ...]

    def __call__(self, page: Page, now: float) -> bool:
        for channel in page.channels:
            if not page.to.get(channel):
                continue
            result: Result | None = None
            for stage in self.stages:
                result = stage(page, channel, result, now)
            if isinstance(result, Interrupted):
                page.interrupted = True
                return False
        return True


def compose(
    *,
    inhibitor: Inhibitor,
    ledger: Ledger,
    storm: StormLimiter,
    deliver: Deliver,
    outbox: Outbox,
) -> tuple[Stage, ...]:
    """The production pipeline, in order. The dispatcher runs exactly this list."""
    tally = Tally(deliver.stats, deliver.metrics)
    return (
        Inhibit(inhibitor, tally),
        Dedup(ledger, tally),
        StormLimit(storm, tally),
        FanOut((deliver, Record(ledger, outbox))),
    )


def run(stages: Sequence[Stage], page: Page, now: float) -> Page:
    """Pass the page through the stages until one has nothing left to do."""
    for stage in stages:
        if not stage(page, now):
            break
    return page
