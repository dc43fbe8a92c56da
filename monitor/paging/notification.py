"""The vocabulary of paging: what a channel is told, what it answers, and a decision's reason.

Pure data, no I/O: the stages (`monitor.paging.stages`) decide, the channels
(`monitor.channels`, HTTP) send.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from monitor.core.alerts import Alert

Kind = Literal["trigger", "resolve"]
NotificationKind = Kind
OutcomeStatus = Literal["delivered", "retry", "permanent"]


def epoch(moment: datetime) -> float:
    return moment.timestamp()


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether to notify, and why (a short stable word, fit for a metric label)."""

    notify: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Notification:
    """One thing to tell a channel: an alert, or a group of alerts, firing or resolved.

    `group_key` names the group (the routing decision that made it; a single alert's group key
    may simply be its `alert_id`). `summary` is the sentence for a grouped or storm-summary
    notification; channels fall back to the first alert's own summary when it is empty.
    """

    kind: NotificationKind
    alerts: tuple[Alert, ...]
    group_key: str
    summary: str = ""

    def __post_init__(self) -> None:
        if not self.alerts:
            raise ValueError("a notification carries at least one alert")

    @property
    def headline(self) -> str:
        """The notification's one-line summary: its own, or its first alert's."""
        return self.summary or self.alerts[0].summary


@dataclass(frozen=True, slots=True)
class Outcome:
    """The classified result of one delivery attempt.

    `retry_after` is the server's `Retry-After` in seconds from the response (only ever set on a
    `retry`); the retry policy never tries again earlier than that.
    """

    status: OutcomeStatus
    reason: str
    retry_after: float | None = None


DELIVERED = Outcome("delivered", "ok")


class Channel(Protocol):
    """An on-call channel. `send` makes one attempt and classifies it; it never raises for
    HTTP or network failures (a programming error still raises).

    `supports_resolve` says whether a `resolve` notification means anything to the channel;
    the dispatcher need not send resolves to a channel without it (and if it does, the channel
    answers `delivered` without a request, since there is nothing to do).
    """

    name: str
    supports_resolve: bool

    def send(self, notification: Notification) -> Outcome: ...
