"""The storm limit: at most so many notifications per route and interval, the rest summarised."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from monitor.core.alerts import Alert
from monitor.core.text import minutes
from monitor.paging.notification import Decision
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
