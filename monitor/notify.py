"""Notification decisions: the stages between an alert on the topic and a page on a channel.

Alertmanager's pipeline, as pure decisions. Time is always an argument (`now`, epoch seconds of the
dispatcher's clock; only the entry layer reads the clock), nothing here does I/O, and every
decision names its reason so that it can be counted and logged. For each alert the dispatch loop:

1. routes it (`monitor.routing.routes_for`) and adds it to its groups (`Groups.add`), and feeds it
   to the `Inhibitor` (`observe`) in case it is the source of an inhibition;
2. on each `Groups.due(now)`, for every `Flush`: drops the alerts `Inhibitor.inhibited` mutes
   (checked at flush time, after `group_wait`, so a spike arriving a little after its
   missing_reversal alerts still mutes them), asks `dedup` per channel whether each remaining
   alert is new, grew, is due a repeat, or was already paged, and admits those with something to
   say through the route's `StormLimiter` (after dedup, so redeliveries spend no budget; folded
   alerts go into one summary per interval, `StormLimiter.due`);
3. after a channel accepted a notification, writes it to the `Ledger` (`note`) and persists
   `Ledger.record(...)`, so that dedup survives a restart (`Ledger.restore`).

`resolution` decides when an incident ended; `Groups.resolve` then carries it to the next flush.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from monitor.alerts import Alert, minutes
from monitor.routing import DispatchConfig, Inhibition, Route, label_value, routes_for

Kind = Literal["trigger", "resolve"]


def epoch(moment: datetime) -> float:
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to notify, and why (a short stable word, fit for a metric label)."""

    notify: bool
    reason: str


# --- 1. Dedup ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notified:
    """What a channel was last told about an alert: trigger or resolve, at which count, when."""

    kind: Kind
    count: int
    at: float


class _LedgerRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    alert_id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    channel: str
    kind: Kind
    count: Annotated[int, Field(ge=1)]
    at: float


def ledger_key(alert_id: str, channel: str) -> str:
    """The key of a ledger record on a compacted topic: the latest record per key wins."""
    return f"{alert_id}/{channel}"


class Ledger:
    """What was notified, per (alert_id, channel). It must outlive the process: the dispatcher
    persists `record(...)` after each accepted notification and `restore`s at start-up."""

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], Notified] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, alert_id: str, channel: str) -> Notified | None:
        return self._entries.get((alert_id, channel))

    def note(self, alert: Alert, channel: str, kind: Kind, now: float) -> dict[str, object]:
        """Remember that `channel` accepted a notification; returns the record to persist."""
        self._entries[alert.alert_id, channel] = Notified(kind, alert.count, now)
        return self.record(alert.alert_id, channel)

    def record(self, alert_id: str, channel: str) -> dict[str, object]:
        """The compact JSON-able record of one entry (key it with `ledger_key`)."""
        entry = self._entries[alert_id, channel]
        return {
            "alert_id": alert_id,
            "channel": channel,
            "kind": entry.kind,
            "count": entry.count,
            "at": entry.at,
        }

    def records(self) -> list[dict[str, object]]:
        return [self.record(alert_id, channel) for alert_id, channel in self._entries]

    @classmethod
    def restore(cls, records: Iterable[Mapping[str, object]]) -> Ledger:
        """A ledger from persisted records, in topic order (a later record replaces an earlier
        one). A malformed record raises ValueError: a ledger that silently forgets would page
        twice."""
        ledger = cls()
        for raw in records:
            try:
                rec = _LedgerRecord.model_validate(raw)
            except ValidationError as exc:
                raise ValueError(f"malformed ledger record {raw!r}: {exc}") from exc
            ledger._entries[rec.alert_id, rec.channel] = Notified(rec.kind, rec.count, rec.at)
        return ledger

    def forget(self, before: float) -> list[tuple[str, str]]:
        """Drop entries last notified before `before` (the retention horizon); returns their
        (alert_id, channel) so the dispatcher can write tombstones."""
        gone = [key for key, entry in self._entries.items() if entry.at < before]
        for key in gone:
            del self._entries[key]
        return gone


def dedup(
    ledger: Ledger,
    alert: Alert,
    channel: str,
    now: float,
    repeat_interval: float,
    *,
    kind: Kind = "trigger",
) -> Decision:
    """Should `channel` hear about `alert` now? Reasons:

    - "new": never notified; "grew": the alert's count went up since (an update, not a new page);
    - "repeat": nothing new, but `repeat_interval` elapsed since the last notification;
    - "duplicate": this alert_id was notified and nothing changed (a redelivery or a replay);
    - "resolved": a resolve for a notified alert; "never_notified": a resolve nobody needs.
    """
    entry = ledger.get(alert.alert_id, channel)
    if kind == "resolve":
        if entry is None:
            return Decision(False, "never_notified")
        return (
            Decision(False, "duplicate") if entry.kind == "resolve" else Decision(True, "resolved")
        )
    if entry is None:
        return Decision(True, "new")
    if alert.count > entry.count:
        return Decision(True, "grew")
    if entry.kind == "trigger" and now - entry.at >= repeat_interval:
        return Decision(True, "repeat")
    return Decision(False, "duplicate")


# --- 2. Inhibition -------------------------------------------------------------------------------


@dataclass(slots=True)
class _Source:
    alert: Alert
    grew_at: float  # dispatcher time of the last growth (new, higher count or later last_seen)


class Inhibitor:
    """Open source alerts per inhibition rule and `equal` label values.

    A source opens when `observe` first sees it, stays open while it keeps growing, and closes
    when `resolve`d or `hold` seconds (dispatcher time) after its last growth. It mutes a target
    that matches the rule, agrees on every `equal` label, is not the source itself, and whose
    `first_seen` lies within `hold` of the source's event-time span (so a replayed old spike
    cannot mute an unrelated, later incident)."""

    def __init__(self, rules: Sequence[Inhibition]) -> None:
        self._rules = list(rules)
        self._open: list[dict[tuple[str, ...], dict[str, _Source]]] = [{} for _ in self._rules]

    def observe(self, alert: Alert, now: float) -> None:
        for rule, sources in zip(self._rules, self._open, strict=True):
            if not rule.source.matches(alert):
                continue
            by_id = sources.setdefault(_equal_values(rule, alert), {})
            old = by_id.get(alert.alert_id)
            if (
                old is None
                or alert.count > old.alert.count
                or alert.last_seen > old.alert.last_seen
            ):
                by_id[alert.alert_id] = _Source(alert, grew_at=now)
            else:
                by_id[alert.alert_id] = _Source(alert, grew_at=old.grew_at)

    def resolve(self, alert_id: str) -> None:
        for sources in self._open:
            for by_id in sources.values():
                by_id.pop(alert_id, None)

    def inhibited(self, alert: Alert, now: float) -> str | None:
        """The reason `alert` is muted (naming the source alert), or None."""
        first_seen = epoch(alert.first_seen)
        for rule, sources in zip(self._rules, self._open, strict=True):
            if not rule.target.matches(alert):
                continue
            values = _equal_values(rule, alert)
            for source in sources.get(values, {}).values():
                src = source.alert
                if (
                    src.alert_id != alert.alert_id
                    and now - source.grew_at < rule.hold
                    and epoch(src.first_seen) - rule.hold
                    <= first_seen
                    <= epoch(src.last_seen) + rule.hold
                ):
                    labels = ", ".join(f"{k}={v}" for k, v in zip(rule.equal, values, strict=True))
                    return f"inhibited by {src.detector} {src.alert_id} ({labels})"
        return None

    def expire(self, now: float) -> int:
        """Forget sources closed by their hold; returns how many went."""
        gone = 0
        for rule, sources in zip(self._rules, self._open, strict=True):
            for values in list(sources):
                by_id = sources[values]
                for alert_id in [i for i, s in by_id.items() if now - s.grew_at >= rule.hold]:
                    del by_id[alert_id]
                    gone += 1
                if not by_id:
                    del sources[values]
        return gone


def _equal_values(rule: Inhibition, alert: Alert) -> tuple[str, ...]:
    return tuple(label_value(alert, label) for label in rule.equal)


# --- 3. Grouping ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GroupKey:
    route: str
    values: tuple[str, ...]  # the alert's values of the route's group_by fields, in order

    def __str__(self) -> str:
        """A channel's group key: `operations/terminal_failure_spike/T-0001`."""
        return "/".join((self.route, *self.values))


@dataclass(frozen=True, slots=True)
class Flush:
    """One notification's worth of a group: its firing alerts and those resolved since the
    last flush. reason: "first" (after group_wait), "changed" (at a group_interval tick),
    "repeat" (unchanged, but repeat_interval elapsed since the group last went out)."""

    route: Route
    key: GroupKey
    alerts: tuple[Alert, ...]
    resolved: tuple[Alert, ...]
    reason: Literal["first", "changed", "repeat"]


@dataclass(slots=True)
class _Group:
    route: Route
    key: GroupKey
    next_flush: float
    alerts: dict[str, Alert] = field(default_factory=dict)
    resolved: dict[str, Alert] = field(default_factory=dict)
    flushed_at: float | None = None
    dirty: bool = True


class Groups:
    """Alert groups keyed by (route, group_by values), with Alertmanager's timing:

    - a new group waits `group_wait` before its first flush, gathering what arrives meanwhile;
    - afterwards it is looked at every `group_interval`: changed (an alert new, grown or
      resolved) -> flush; unchanged but `repeat_interval` since its last flush -> flush again;
    - a resolved alert goes out once, in the next flush, then leaves; an empty group is dropped.

    A flush carries the whole group; `dedup` then drops per channel what was already said.
    When `due` runs late, the next tick is `group_interval` after it (no catch-up bursts)."""

    def __init__(self, config: DispatchConfig) -> None:
        self._config = config
        self._groups: dict[GroupKey, _Group] = {}

    def __len__(self) -> int:
        return len(self._groups)

    def add(self, alert: Alert, now: float) -> list[GroupKey]:
        """Put (a new version of) `alert` into the group of every route it takes."""
        keys = []
        for route in routes_for(self._config, alert):
            key = GroupKey(route.name, route.group_values(alert))
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(route, key, next_flush=now + route.group_wait)
            if group.alerts.get(alert.alert_id) != alert:
                group.alerts[alert.alert_id] = alert
                group.resolved.pop(alert.alert_id, None)
                group.dirty = True
            keys.append(key)
        return keys

    def resolve(self, alert_id: str) -> None:
        """The incident ended: report it resolved in the next flush of each of its groups."""
        for group in self._groups.values():
            alert = group.alerts.pop(alert_id, None)
            if alert is not None:
                group.resolved[alert_id] = alert
                group.dirty = True

    def next_due(self) -> float | None:
        """When `due` next has something to look at (for the dispatcher's sleep)."""
        return min((g.next_flush for g in self._groups.values()), default=None)

    def due(self, now: float) -> list[Flush]:
        flushes = []
        for key, group in list(self._groups.items()):
            if group.next_flush > now:
                continue
            route = group.route
            group.next_flush = now + route.group_interval
            reason: Literal["first", "changed", "repeat"] | None = None
            if group.flushed_at is None:
                reason = "first"
            elif group.dirty:
                reason = "changed"
            elif now - group.flushed_at >= route.repeat_interval and group.alerts:
                reason = "repeat"
            if reason is None:
                continue
            flushes.append(
                Flush(route, key, _ordered(group.alerts), _ordered(group.resolved), reason)
            )
            group.flushed_at = now
            group.dirty = False
            group.resolved.clear()
            if not group.alerts:
                del self._groups[key]
        return flushes


def _ordered(alerts: Mapping[str, Alert]) -> tuple[Alert, ...]:
    return tuple(sorted(alerts.values(), key=lambda a: (a.first_seen, a.alert_id)))


# --- 4. Storm limit ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StormSummary:
    """The alerts folded on one route during one interval, sent as a single notification."""

    route: str
    start: float
    end: float
    folded: int
    by_detector: tuple[tuple[str, int], ...]  # most frequent first
    merchants: tuple[str, ...]  # most frequent first
    examples: tuple[Alert, ...]  # the first few folded alerts, for channels that need one
    text: str


@dataclass(slots=True)
class _Window:
    start: float
    per: float
    limit: int
    sent: int = 0
    detectors: Counter[str] = field(default_factory=Counter)
    merchants: Counter[str] = field(default_factory=Counter)
    examples: list[Alert] = field(default_factory=list)


class StormLimiter:
    """At most `storm_limit.max_notifications` per `storm_limit.per` seconds on each route.

    Admit each alert once per route (before fanning it out to the route's channels): the first N
    of an interval are "sent", the rest "folded" into one `StormSummary` that `due` hands out
    when the interval ends. An interval starts at the first admission after the previous one
    ended. Resolves are not meant to pass through here (they only reduce noise)."""

    MERCHANTS_IN_TEXT = 5
    EXAMPLES = 5

    def __init__(self) -> None:
        self._windows: dict[str, _Window] = {}
        self._closed: list[StormSummary] = []

    def admit(self, route: Route, alert: Alert, now: float) -> Decision:
        window = self._windows.get(route.name)
        if window is not None and now >= window.start + window.per:
            self._close(route.name, window)
            window = None
        if window is None:
            limit = route.storm_limit
            window = self._windows[route.name] = _Window(now, limit.per, limit.max_notifications)
        if window.sent < window.limit:
            window.sent += 1
            return Decision(True, "sent")
        window.detectors[alert.detector] += 1
        window.merchants[alert.merchant_id] += 1
        if len(window.examples) < self.EXAMPLES:
            window.examples.append(alert)
        return Decision(False, "folded")

    def due(self, now: float) -> list[StormSummary]:
        """Summaries of the intervals that ended by `now` and folded something."""
        for name, window in list(self._windows.items()):
            if now >= window.start + window.per:
                self._close(name, window)
        closed, self._closed = self._closed, []
        return closed

    def _close(self, route: str, window: _Window) -> None:
        del self._windows[route]
        folded = sum(window.detectors.values())
        if folded:
            self._closed.append(_summary(route, window, folded))


def _summary(route: str, window: _Window, folded: int) -> StormSummary:
    by_detector = tuple(window.detectors.most_common())
    merchants = tuple(m for m, _ in window.merchants.most_common())
    shown = merchants[: StormLimiter.MERCHANTS_IN_TEXT]
    more = len(merchants) - len(shown)
    detectors = ", ".join(f"{name} ({n})" for name, n in by_detector)
    text = (
        f"{folded} more alert{'s' if folded != 1 else ''} of {detectors},"
        f" merchants {', '.join(shown)}{f' and {more} more' if more else ''}"
        f" (route {route}, storm limit {window.limit} per {minutes(window.per)})"
    )
    return StormSummary(
        route,
        window.start,
        window.start + window.per,
        folded,
        by_detector,
        merchants,
        tuple(window.examples),
        text,
    )


# --- 5. Resolve ----------------------------------------------------------------------------------


def resolution(
    alert: Alert, event_time: float, resolve_after: float, *, explicit: bool = False
) -> str | None:
    """Has the incident ended? "explicit" when told so (an operator or a detector's resolution);
    "quiet" when its evidence has not grown for `resolve_after` seconds of the input's event time
    (`event_time`: the dispatcher's event-time clock, e.g. the highest `last_seen` it has seen
    or the scoring loop's watermark, in epoch seconds, never the wall clock, so a replay
    resolves the same way); else None (still open)."""
    if explicit:
        return "explicit"
    if event_time - epoch(alert.last_seen) >= resolve_after:
        return "quiet"
    return None
