"""The dispatch loop: alerts from the alerts topic to the on-call channels (DESIGN "The two loops").

    poll alerts -> inhibit-observe and group (monitor.notify) -> at each tick, for every due
    group: inhibition, dedup per channel (the ledger), storm limit, deliver with retry
    (monitor.delivery) -> record what was said (the ledger, durably) or park what could not be
    said (`posmon.alerts.dlq`) -> commit the alerts that are settled

Resolve: an incident of a detector whose incidents end by themselves (an outage that subsides,
a burst that stops) is resolved once its alert has not grown for `RESOLVE_AFTER` of event time
(the newest `last_seen` the dispatcher has seen: a replay resolves the same way); the channels
that were told and support it hear `resolve`. Channels that expire firing alerts by themselves
(Alertmanager: `repost_every`) are told again about open incidents until they resolve.

An alert's offset is committed only once every group it joined has been flushed and delivered
(or parked, inhibited, or found already said): a crash re-reads the unsettled alerts, and the
ledger, restored at start-up, turns what was already paged into "duplicate". Scoring never waits
on HTTP: this loop runs apart from it, and an undeliverable page waits on the topic.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from pydantic import ValidationError

from monitor.alerts import Alert
from monitor.channels.base import Channel, Notification
from monitor.delivery import Delivered, Deliverer, Interrupted, Parked
from monitor.metrics import DispatchMetrics
from monitor.notify import Flush, Groups, Inhibitor, Ledger, StormLimiter, dedup, resolution
from monitor.pipeline import Batch, Source
from monitor.routing import DispatchConfig, routes_for

# How long the ledger remembers what was said (far beyond any repeat_interval), and how often
# it is pruned.
LEDGER_RETENTION = 7 * 86400.0
_PRUNE_EVERY = 3600.0

# Detectors whose incidents end by themselves, and the event time after which a quiet one has.
RESOLVE_AFTER: dict[str, float] = {"terminal_failure_spike": 900.0, "small_amount_burst": 1800.0}
# Other incidents (a ghost debit) are closed by people, not by posmon: after a day of event time
# without growth they only leave their group (no more repeats), silently.
FORGET_AFTER = 86400.0


class Outbox(Protocol):
    """Where the dispatcher writes durably: ledger records and parked alerts."""

    def record(self, records: Sequence[dict[str, object]]) -> None: ...

    def park(self, parked: Sequence[dict[str, object]]) -> None: ...

    def forget(self, keys: Sequence[tuple[str, str]]) -> None: ...


@dataclass
class DispatchStats:
    received: int = 0
    invalid: int = 0
    inhibited: int = 0
    duplicates: int = 0
    folded: int = 0
    delivered: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    parked: int = 0
    summaries: int = 0


class Dispatcher:
    def __init__(
        self,
        config: DispatchConfig,
        channels: Mapping[str, Channel],
        deliverer: Deliverer,
        outbox: Outbox,
        *,
        ledger: Ledger | None = None,
        metrics: DispatchMetrics | None = None,
        clock: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.config = config
        self.channels = channels
        self.deliverer = deliverer
        self.outbox = outbox
        self.ledger = ledger or Ledger()
        self.groups = Groups(config)
        self.inhibitor = Inhibitor(config.inhibitions)
        self.storm = StormLimiter()
        self.stats = DispatchStats()
        self.metrics = metrics
        self._clock = clock  # for delivery latency only; decisions use the `now` passed in
        self._since: dict[tuple[int, int], float] = {}  # unsettled alert -> when it arrived
        self.last_turn: float | None = None  # when the loop last turned (for /healthz)
        self._open: dict[str, Alert] = {}  # notified incidents that may still resolve
        self._event_time = 0.0  # the newest last_seen seen, epoch seconds
        self._reposted: dict[str, float] = {}  # channel -> when open incidents were last re-sent
        self._pruned_at: float | None = None
        if metrics is not None:
            # Read at scrape time: the loop itself may be busy retrying a channel that is down,
            # which is exactly when the age of the backlog matters.
            metrics.oldest.set_function(lambda: self.oldest_undelivered(self._clock()))
        # Unsettled alerts: (partition, offset) -> the groups still to flush it.
        self._waiting: dict[tuple[int, int], set[str]] = {}
        self._by_alert: dict[str, set[tuple[int, int]]] = defaultdict(set)
        self._received: dict[int, list[int]] = defaultdict(list)  # offsets in order of arrival

    # -- input -------------------------------------------------------------------------------

    def receive(self, batch: Batch, now: float) -> None:
        """Take a batch of alert messages; `batch.position` maps partition -> next offset."""
        assert isinstance(batch.position, dict)
        for partition, messages in batch.chunks:
            first = batch.position[partition] - len(messages)
            for i, raw in enumerate(messages):
                where = (partition, first + i)
                self._received[partition].append(where[1])
                self.stats.received += 1
                try:
                    alert = Alert.model_validate_json(raw)
                except ValidationError as exc:
                    self.stats.invalid += 1
                    self.outbox.park(
                        [
                            {
                                "reason": "invalid_alert",
                                "error": _one_line(exc),
                                "raw": raw.decode(errors="replace"),
                            }
                        ]
                    )
                    continue
                self._event_time = max(self._event_time, alert.last_seen.timestamp())
                if alert.details.get("resolved") is True:  # the scorer saw the incident end
                    self._open.pop(alert.alert_id, None)
                    self.groups.resolve(alert.alert_id)
                    self._resolve(alert, now)
                    continue
                self._open[alert.alert_id] = alert
                self.inhibitor.observe(alert, now)
                keys = self.groups.add(alert, now)
                if keys:
                    self._waiting[where] = {str(k) for k in keys}
                    self._since[where] = now
                    self._by_alert[alert.alert_id].add(where)

    # -- the tick ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Deliver every group that is due, then the storm summaries whose interval is over."""
        for flush in self.groups.due(now):
            self._flush(flush, now)
        self._resolve_quiet(now)
        self._repost(now)
        if self._pruned_at is None or now - self._pruned_at >= _PRUNE_EVERY:
            self._pruned_at = now
            forgotten = self.ledger.forget(now - LEDGER_RETENTION)
            if forgotten:
                self.outbox.forget(forgotten)
        for summary in self.storm.due(now):
            route = self.config.route(summary.route)
            note = Notification(
                "trigger", tuple(summary.examples), f"{summary.route}/storm", summary.text
            )
            for name in route.channels:
                self._deliver(name, note, now, record=False)
            self.stats.summaries += 1

    def _flush(self, flush: Flush, now: float) -> None:
        route = flush.route
        per_channel: dict[str, list[Alert]] = {name: [] for name in route.channels}
        for alert in flush.alerts:
            if self.inhibitor.inhibited(alert, now) is not None:
                self.stats.inhibited += 1
                self._withheld("inhibited")
                continue
            decisions = {
                name: dedup(self.ledger, alert, name, now, route.repeat_interval)
                for name in route.channels
            }
            if not any(d.notify for d in decisions.values()):
                self.stats.duplicates += 1
                self._withheld("duplicate")
                continue
            if not self.storm.admit(route, alert, now).notify:
                self.stats.folded += 1
                self._withheld("folded")
                continue
            for name, decision in decisions.items():
                if decision.notify:
                    per_channel[name].append(alert)
        for name, alerts in per_channel.items():
            if alerts:
                note = Notification("trigger", tuple(alerts), str(flush.key))
                if self._deliver(name, note, now, record=True) is None:
                    return  # stopping: the group's alerts stay unsettled and are read again
        for alert in flush.alerts:
            self._settle(alert.alert_id, str(flush.key))

    def _resolve_quiet(self, now: float) -> None:
        for alert_id, alert in list(self._open.items()):
            after = RESOLVE_AFTER.get(alert.detector, FORGET_AFTER)
            if resolution(alert, self._event_time, after) is None:
                continue
            del self._open[alert_id]
            self.groups.resolve(alert_id)
            if alert.detector in RESOLVE_AFTER:
                self._resolve(alert, now)
            else:
                self.inhibitor.resolve(alert_id)

    def _resolve(self, alert: Alert, now: float) -> None:
        """Tell every channel that heard of `alert`, and can, that its incident ended."""
        self.inhibitor.resolve(alert.alert_id)
        names = {name for route in routes_for(self.config, alert) for name in route.channels}
        for name in sorted(names):
            decision = dedup(self.ledger, alert, name, now, 0.0, kind="resolve")
            if self.channels[name].supports_resolve and decision.notify:
                note = Notification("resolve", (alert,), alert.alert_id)
                self._deliver(name, note, now, record=True)

    def _repost(self, now: float) -> None:
        """Tell channels that expire firing alerts (Alertmanager) again about open incidents."""
        for name, channel in self.channels.items():
            every = getattr(channel, "repost_every", None)
            if every is None or now - self._reposted.setdefault(name, now) < every:
                continue
            self._reposted[name] = now
            told = [
                a
                for a in self._open.values()
                if a.detector in RESOLVE_AFTER and self.ledger.get(a.alert_id, name) is not None
            ]
            if told:
                self._deliver(
                    name, Notification("trigger", tuple(told), "repost"), now, record=False
                )

    def _deliver(self, name: str, note: Notification, now: float, *, record: bool) -> bool | None:
        """True delivered, False parked, None interrupted (the process is stopping)."""
        started = self._clock()
        result = self.deliverer.deliver(self.channels[name], note)
        if self.metrics is not None and not isinstance(result, Interrupted):
            outcome = f"parked_{result.cause}" if isinstance(result, Parked) else "delivered"
            self.metrics.delivered.labels(channel=name, outcome=outcome).inc()
            self.metrics.latency.labels(channel=name).observe(self._clock() - started)
            if result.attempts > 1:
                self.metrics.retries.labels(channel=name).inc(result.attempts - 1)
            if isinstance(result, Parked):
                self.metrics.parked.labels(channel=name, cause=result.cause).inc(len(note.alerts))
        if isinstance(result, Delivered):
            self.stats.delivered[(name, "delivered")] += 1
            if record:
                self.outbox.record([self.ledger.note(a, name, note.kind, now) for a in note.alerts])
            return True
        if isinstance(result, Parked):
            self.stats.parked += 1
            self.stats.delivered[(name, f"parked_{result.cause}")] += 1
            self.outbox.park(
                [
                    {"reason": result.reason, "channel": name, "alert": a.model_dump(mode="json")}
                    for a in note.alerts
                ]
            )
            return False
        return None

    def _settle(self, alert_id: str, group: str) -> None:
        for where in list(self._by_alert.get(alert_id, ())):
            waiting = self._waiting.get(where)
            if waiting is not None:
                waiting.discard(group)
                if not waiting:
                    del self._waiting[where]
                    self._since.pop(where, None)
                    self._by_alert[alert_id].discard(where)
        if not self._by_alert.get(alert_id):
            self._by_alert.pop(alert_id, None)

    def _withheld(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.withheld.labels(reason=reason).inc()

    def oldest_undelivered(self, now: float) -> float:
        """Seconds since the oldest unsettled alert arrived (0 when none)."""
        since = list(self._since.values())  # a copy: the scrape thread reads it too
        return now - min(since) if since else 0.0

    # -- commits -----------------------------------------------------------------------------

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset to commit: just past the longest settled prefix."""
        positions = {}
        for partition, offsets in self._received.items():
            settled = 0
            for offset in offsets:
                if (partition, offset) in self._waiting:
                    break
                settled += 1
            if settled:
                positions[partition] = offsets[settled - 1] + 1
                del offsets[:settled]
        return positions


def run_dispatch(
    source: Source,
    dispatcher: Dispatcher,
    *,
    now: Callable[[], float],
    stopping: Callable[[], bool],
) -> None:
    """The loop: receive what the source has, tick, commit what is settled. `now` is the wall
    clock in seconds: the ledger's times outlive the process (and the machine)."""
    while not stopping():
        batch = source.poll()
        if batch is None:
            return
        moment = dispatcher.last_turn = now()
        if batch.chunks:
            dispatcher.receive(batch, moment)
        dispatcher.tick(moment)
        positions = dispatcher.committable()
        if positions:
            source.commit(Batch([], positions))


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )
