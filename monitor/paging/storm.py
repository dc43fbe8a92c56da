"""The storm limit: at most so many notifications per route and interval, the rest summarised."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from monitor.core.alerts import Alert
from monitor.core.text import minutes
from monitor.paging.notification import Decision, epoch
from monitor.paging.routing import Route


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
    start: float  # event time, a multiple of `per`
    per: float
    limit: int
    opened: float  # dispatcher time of its first admission, then of its last summary
    sent: int = 0
    detectors: Counter[str] = field(default_factory=Counter)  # folded since the last summary
    merchants: Counter[str] = field(default_factory=Counter)
    examples: list[Alert] = field(default_factory=list)


class StormLimiter:
    """At most `storm_limit.max_notifications` per `storm_limit.per` seconds on each route.

    The intervals are on event time, aligned to multiples of `per`: an alert counts in the
    interval of its `last_seen`, whenever it is read, so a backlog read at once is limited as
    the same alerts arriving live would have been (and not folded as one storm). Admit each
    alert once per route (before fanning it out to the route's channels): the first N of an
    interval are "sent", the rest "folded" into a `StormSummary` that `due` hands out `per`
    seconds of dispatcher time after the interval's first admission (its alerts may still be
    waiting in their groups when event time has passed its end; a later fold goes out `per`
    after that summary). An interval is remembered, with what it sent, for `RETENTION` seconds
    after that. Resolves are not meant to pass through here (they only reduce noise)."""

    MERCHANTS_IN_TEXT = 5
    EXAMPLES = 5
    RETENTION = 3600.0

    def __init__(self) -> None:
        self._windows: dict[tuple[str, float], _Window] = {}

    def admit(self, route: Route, alert: Alert, now: float) -> Decision:
        limit = route.storm_limit
        start = epoch(alert.last_seen) // limit.per * limit.per
        window = self._windows.get((route.name, start))
        if window is None:
            window = _Window(start, limit.per, limit.max_notifications, opened=now)
            self._windows[route.name, start] = window
        if window.sent < window.limit:
            window.sent += 1
            return Decision(True, "sent")
        window.detectors[alert.detector] += 1
        window.merchants[alert.merchant_id] += 1
        if len(window.examples) < self.EXAMPLES:
            window.examples.append(alert)
        return Decision(False, "folded")

    def due(self, now: float) -> list[StormSummary]:
        """Summaries of the intervals opened `per` seconds ago or more (dispatcher time) that
        folded something since their last summary."""
        summaries = []
        for (route, start), window in sorted(self._windows.items()):
            if now < window.opened + window.per:
                continue
            if window.detectors:
                summaries.append(_summary(route, window, sum(window.detectors.values())))
                window.detectors, window.merchants, window.examples = Counter(), Counter(), []
                window.opened = now
            elif now >= window.opened + window.per + self.RETENTION:
                del self._windows[route, start]
        return summaries


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
