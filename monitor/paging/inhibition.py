"""Inhibition: an open source alert mutes matching targets (one outage, one page)."""

from __future__ import annotations

from collections.abc import Sequence

from monitor.core.alerts import Alert
from monitor.paging.notification import epoch
from monitor.paging.routing import Inhibition, label_value


class Inhibitor:
    """Source alerts per inhibition rule and `equal` label values, newest version each.

    A source mutes a target that matches the rule, agrees on every `equal` label, is not the
    source itself, and whose `first_seen` lies within `hold` of the source's event-time span
    (`first_seen` to `last_seen`): the outage and the `hold` around it. Only event times decide,
    never when the alerts were read, so a backlog read at once mutes what live traffic would
    have muted, and a replayed old spike cannot mute an unrelated, later incident. A resolved
    source keeps muting the targets of its span (the missing reversals of an outage arrive after
    it ended). Sources are forgotten by `expire`, on event time."""

    def __init__(self, rules: Sequence[Inhibition]) -> None:
        self._rules = list(rules)
        self._sources: list[dict[tuple[str, ...], dict[str, Alert]]] = [{} for _ in self._rules]

    def observe(self, alert: Alert) -> None:
        for rule, sources in zip(self._rules, self._sources, strict=True):
            if not rule.source.matches(alert):
                continue
            by_id = sources.setdefault(_equal_values(rule, alert), {})
            old = by_id.get(alert.alert_id)
            if old is None or alert.last_seen >= old.last_seen:  # a redelivery never shrinks it
                by_id[alert.alert_id] = alert

    def inhibited(self, alert: Alert) -> str | None:
        """The reason `alert` is muted (naming the source alert), or None."""
        first_seen = epoch(alert.first_seen)
        for rule, sources in zip(self._rules, self._sources, strict=True):
            if not rule.target.matches(alert):
                continue
            values = _equal_values(rule, alert)
            for src in sources.get(values, {}).values():
                if (
                    src.alert_id != alert.alert_id
                    and epoch(src.first_seen) - rule.hold
                    <= first_seen
                    <= epoch(src.last_seen) + rule.hold
                ):
                    labels = ", ".join(f"{k}={v}" for k, v in zip(rule.equal, values, strict=True))
                    return f"inhibited by {src.detector} {src.alert_id} ({labels})"
        return None

    def expire(self, before: float) -> int:
        """Forget sources whose span and hold ended before `before` (event time, epoch
        seconds); returns how many went."""
        gone = 0
        for rule, sources in zip(self._rules, self._sources, strict=True):
            for values in list(sources):
                by_id = sources[values]
                for alert_id in [
                    i for i, a in by_id.items() if epoch(a.last_seen) + rule.hold < before
                ]:
                    del by_id[alert_id]
                    gone += 1
                if not by_id:
                    del sources[values]
        return gone


def _equal_values(rule: Inhibition, alert: Alert) -> tuple[str, ...]:
    return tuple(label_value(alert, label) for label in rule.equal)
