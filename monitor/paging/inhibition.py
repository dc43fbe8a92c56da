"""Inhibition: an open source alert mutes matching targets (one outage, one page)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monitor.core.alerts import Alert
from monitor.paging.notification import epoch
from monitor.paging.routing import Inhibition, label_value


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
