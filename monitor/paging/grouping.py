"""Grouping: alerts gathered per route and `group_by` values, flushed with Alertmanager's timing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from monitor.core.alerts import Alert
from monitor.paging.routing import DispatchConfig, Route, routes_for


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
