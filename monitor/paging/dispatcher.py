"""The dispatch loop: alerts from the alerts topic to the on-call channels (ARCHITECTURE.md).

    poll alerts -> route and group them (`Groups.add`), note open inhibition sources -> at each
    tick, run every due group's flush and every resolve through the stages (`stages.compose`:
    inhibit, dedup against the ledger, storm limit, deliver with retry, record) -> commit the
    alerts that are settled (`Offsets`)

Resolve: an incident of a detector whose incidents end by themselves (an outage that subsides,
a burst that stops) is resolved once its alert has not grown for `RESOLVE_AFTER` of event time
(the newest `last_seen` the dispatcher has seen: a replay resolves the same way); the channels
that were told and support it hear `resolve`. Other incidents leave their groups, silently,
after `FORGET_AFTER`. Channels that expire firing alerts by themselves (Alertmanager:
`repost_every`) are told again about open incidents until they resolve.

Every alert is paged or accounted for, whatever the pace of its arrival: an incident is resolved
or forgotten (quietly, or because the scorer said so) only once every version received has gone
out with its groups' flushes. A backlog read at once after downtime has event time far ahead
of its groups' first flushes; without this order its alerts would be resolved before anyone
heard of them. The decisions about *which* alerts to page are taken on event time (quiet
horizons, inhibition spans, storm intervals), the wall clock only says *when* (group timing,
retries, repeats), so a backlog pages the alerts that live traffic would have paged.

An alert's offset is committed only once every group it joined has been flushed with it (or it
was parked, inhibited, or found already said): a crash re-reads the unsettled alerts, and the
ledger, restored at start-up, turns what was already paged into "duplicate". Scoring never waits
on HTTP: this loop runs apart from it, and an undeliverable page waits on the topic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from pydantic import ValidationError

from monitor.core.alerts import Alert
from monitor.core.batches import Batch, Source
from monitor.paging.delivery import Deliverer
from monitor.paging.grouping import Flush, Groups
from monitor.paging.inhibition import Inhibitor
from monitor.paging.ledger import Ledger
from monitor.paging.metrics import DispatchMetrics
from monitor.paging.notification import Channel, Notification
from monitor.paging.offsets import Offsets
from monitor.paging.resolution import FORGET_AFTER, RESOLVE_AFTER, resolution
from monitor.paging.routing import DispatchConfig, routes_for
from monitor.paging.stages import Deliver, DispatchStats, Outbox, Page, Tally, compose, run
from monitor.paging.storm import StormLimiter

log = logging.getLogger("posmon.dispatch")

# How long the ledger remembers what was said (far beyond any repeat_interval), and how often
# it is pruned.
LEDGER_RETENTION = 7 * 86400.0
_PRUNE_EVERY = 3600.0


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
        self.tally = Tally(self.stats, metrics)
        self.offsets = Offsets()
        # `clock` times deliveries only; decisions use the `now` passed in.
        self.deliver = Deliver(channels, deliverer, self.stats, metrics, clock)
        self.stages = compose(
            inhibitor=self.inhibitor,
            ledger=self.ledger,
            storm=self.storm,
            deliver=self.deliver,
            outbox=outbox,
        )
        self.last_turn: float | None = None  # when the loop last turned (for /healthz)
        self._open: dict[str, Alert] = {}  # firing incidents that may still resolve
        self._ended: dict[str, Alert] = {}  # resolved by the scorer, their trigger still to go out
        self._event_time = 0.0  # the newest last_seen seen, epoch seconds
        # alert_id -> (highest revision received, its last_seen): an older version that arrives
        # later is withheld as stale. Kept as long as the ledger remembers, on event time.
        self._revisions: dict[str, tuple[int, float]] = {}
        self._reposted: dict[str, float] = {}  # channel -> when open incidents were last re-sent
        self._pruned_at: float | None = None
        if metrics is not None:
            # Read at scrape time: the loop itself may be busy retrying a channel that is down,
            # which is exactly when the age of the backlog matters.
            offsets = self.offsets
            metrics.oldest.set_function(lambda: offsets.oldest(clock()))

    # -- input -------------------------------------------------------------------------------

    def receive(self, batch: Batch, now: float) -> None:
        """Take a batch of alert messages; `batch.position` maps partition -> next offset."""
        assert isinstance(batch.position, dict)
        for partition, messages in batch.chunks:
            first = batch.position[partition] - len(messages)
            for i, raw in enumerate(messages):
                where = (partition, first + i)
                self.offsets.received(where)
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
                if self._stale(alert):
                    # An older state of the incident, published late (a former owner of its
                    # partition that stalled): the newer version already here stands.
                    self.tally.withhold("stale")
                    continue
                self._event_time = max(self._event_time, alert.last_seen.timestamp())
                self.inhibitor.observe(alert)
                if alert.details.get("resolved") is True:  # the scorer saw the incident end
                    self._open.pop(alert.alert_id, None)
                    self._ended[alert.alert_id] = alert
                    # Settled once the channels heard the resolve (or found nobody to tell).
                    self.offsets.wait(where, _resolving(alert.alert_id), {_RESOLVE}, now)
                    continue
                if self._ended.pop(alert.alert_id, None) is not None:  # it came back first
                    self.offsets.settle(_resolving(alert.alert_id), _RESOLVE)
                self._open[alert.alert_id] = alert
                keys = self.groups.add(alert, now)
                if keys:
                    self.offsets.wait(where, alert.alert_id, {str(k) for k in keys}, now)
                else:
                    self.tally.withhold("unrouted")  # no route and no default route

    def _stale(self, alert: Alert) -> bool:
        """Is `alert` older than a version of its id already received? Remembers its revision."""
        seen = self._revisions.get(alert.alert_id)
        if seen is not None and alert.revision < seen[0]:
            return True
        self._revisions[alert.alert_id] = (alert.revision, alert.last_seen.timestamp())
        return False

    # -- the tick ----------------------------------------------------------------------------

    def tick(self, now: float) -> None:
        """Page every group that is due, resolve what went quiet, re-post open incidents to the
        channels that expire them, prune the ledger, and send the storm summaries that are due."""
        for flush in self.groups.due(now):
            self._flush(flush, now)
        self._resolve_ended(now)
        self._resolve_quiet(now)
        self._repost(now)
        self._prune(now)
        self._storm_summaries(now)

    def _flush(self, flush: Flush, now: float) -> None:
        self.stats.flushes[flush.reason] += 1
        key = str(flush.key)
        log.debug("group %s: %s flush, %d firing", key, flush.reason, len(flush.alerts))
        page = Page("trigger", key, flush.route, tuple(flush.route.channels), list(flush.alerts))
        if run(self.stages, page, now).interrupted:
            return  # stopping: the group's alerts stay unsettled and are read again
        # The resolved ones too: an alert that ended before its group went out waits no more.
        for alert in (*flush.alerts, *flush.resolved):
            self.offsets.settle(alert.alert_id, key)

    def _resolve_ended(self, now: float) -> None:
        """Resolve what the scorer said has ended, once its trigger has gone out."""
        for alert_id, alert in list(self._ended.items()):
            if self.offsets.pending(alert_id):
                continue  # a version still waits for its group: the trigger comes first
            if self._resolve(alert, now):
                del self._ended[alert_id]
                self.groups.resolve(alert_id)
                self.offsets.settle(_resolving(alert_id), _RESOLVE)

    def _resolve_quiet(self, now: float) -> None:
        for alert_id, alert in list(self._open.items()):
            after = RESOLVE_AFTER.get(alert.detector, FORGET_AFTER)
            if self.offsets.pending(alert_id) or resolution(alert, self._event_time, after) is None:
                continue  # still growing, or a version no channel has heard of yet
            del self._open[alert_id]
            self.groups.resolve(alert_id)
            if alert.detector in RESOLVE_AFTER:
                self._resolve(alert, now)

    def _resolve(self, alert: Alert, now: float) -> bool:
        """Tell every channel that heard of `alert`, and can, that its incident ended; False
        when the process is stopping before they all heard it."""
        names = {name for route in routes_for(self.config, alert) for name in route.channels}
        able = tuple(name for name in sorted(names) if self.channels[name].supports_resolve)
        page = run(self.stages, Page("resolve", alert.alert_id, None, able, [alert]), now)
        return not page.interrupted

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
                self.deliver.send(name, Notification("trigger", tuple(told), "repost"))

    def _prune(self, now: float) -> None:
        if self._pruned_at is not None and now - self._pruned_at < _PRUNE_EVERY:
            return
        self._pruned_at = now
        # Inhibition sources are kept as long as the ledger remembers (on event time): a
        # backlog's targets are muted however late they are read.
        horizon = self._event_time - LEDGER_RETENTION
        self.inhibitor.expire(horizon)
        self._revisions = {k: v for k, v in self._revisions.items() if v[1] >= horizon}
        forgotten = self.ledger.forget(now - LEDGER_RETENTION)
        if forgotten:
            self.outbox.forget(forgotten)

    def _storm_summaries(self, now: float) -> None:
        for summary in self.storm.due(now):
            route = self.config.route(summary.route)
            note = Notification(
                "trigger", tuple(summary.examples), f"{summary.route}/storm", summary.text
            )
            for name in route.channels:
                self.deliver.send(name, note)
            self.stats.summaries += 1

    # -- commits -----------------------------------------------------------------------------

    def oldest_undelivered(self, now: float) -> float:
        """Seconds since the oldest unsettled alert arrived (0 when none)."""
        return self.offsets.oldest(now)

    def committable(self) -> dict[int, int]:
        """Per partition, the next offset to commit: just past the longest settled prefix."""
        return self.offsets.committable()


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


_RESOLVE = "resolve"  # what a resolved message waits for in `Offsets`


def _resolving(alert_id: str) -> str:
    """The key its resolved messages wait under (apart from its firing versions)."""
    return f"{alert_id}/resolved"


def _one_line(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
        for e in exc.errors(include_url=False, include_input=False)
    )
