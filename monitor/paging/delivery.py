"""Delivery with retry: back off to a deadline, honour `Retry-After`, never lose a notification.

`RetryPolicy` is the pure decision (how long to wait after attempt n); `Deliverer` runs the
attempts for one notification on one channel with an injected clock, sleep and stop flag, so it is
tested without real time. The result says what the dispatcher must do with the alert's offset:

- `Delivered`: the channel accepted it; commit.
- `Parked`: it cannot be delivered (a permanent 4xx after exactly one attempt, or the deadline
  passed while retrying); put it on `posmon.alerts.dlq` with the reason, then commit.
- `Interrupted`: the process is stopping; do *not* commit, so the notification is delivered
  after the restart (delivery is at-least-once; channels deduplicate on `alert_id`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from monitor.paging.notification import Channel, Notification, Outcome


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter, a cap per wait and a deadline for the whole delivery.

    The wait after attempt `n` (1-based) is `min(max_delay, initial * multiplier ** (n - 1))`,
    shortened by a random fraction of at most `jitter` (so a fleet of dispatchers that failed
    together does not retry together, and no wait ever exceeds `max_delay`), and then raised to
    the server's `Retry-After` if that is longer: we never come back earlier than asked, even past
    `max_delay`. `deadline` bounds the time from the first attempt to the last.
    """

    initial: float = 1.0
    multiplier: float = 2.0
    max_delay: float = 60.0
    deadline: float = 3600.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.max_delay):
            raise ValueError("need 0 < initial <= max_delay")
        if self.multiplier < 1:
            raise ValueError("multiplier must be >= 1")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        if self.deadline < 0:
            raise ValueError("deadline must be >= 0")

    def backoff(self, attempt: int) -> float:
        """The wait after `attempt` before jitter and `Retry-After`."""
        if attempt < 1:
            raise ValueError("attempts count from 1")
        # cap the exponent first: multiplier ** 1000 would overflow a float
        delay = self.initial
        for _ in range(attempt - 1):
            delay *= self.multiplier
            if delay >= self.max_delay:
                return self.max_delay
        return min(delay, self.max_delay)

    def next_delay(self, attempt: int, outcome: Outcome, rng: random.Random) -> float:
        """Seconds to wait after `attempt` ended with the (retryable) `outcome`."""
        delay = self.backoff(attempt) * (1.0 - self.jitter * rng.random())
        if outcome.retry_after is not None:
            delay = max(delay, outcome.retry_after)
        return delay


@dataclass(frozen=True, slots=True)
class Delivered:
    attempts: int


@dataclass(frozen=True, slots=True)
class Parked:
    """Not deliverable: `cause` is `permanent` (the channel refused it) or `deadline` (it kept
    failing); `reason` is the last outcome's reason, prefixed with the channel name."""

    reason: str
    cause: Literal["permanent", "deadline"]
    attempts: int


@dataclass(frozen=True, slots=True)
class Interrupted:
    """Stopped before the channel accepted it; the caller keeps the notification."""

    attempts: int
    last_reason: str | None


Result = Delivered | Parked | Interrupted


class Deliverer:
    """Runs `channel.send` until delivered, refused, out of time, or asked to stop.

    `now` is a monotonic clock in seconds, `sleep` waits (a `threading.Event.wait` makes it wake
    at once on shutdown), `stopping` is polled before every attempt and at least every
    `poll_interval` seconds while waiting. If the next attempt would come after the deadline the
    notification is parked at once rather than after a useless wait (a `Retry-After` of a day
    parks it now). `channel.send` raising is a bug and propagates.
    """

    def __init__(
        self,
        policy: RetryPolicy,
        *,
        now: Callable[[], float],
        sleep: Callable[[float], object],
        stopping: Callable[[], bool] = lambda: False,
        rng: random.Random | None = None,
        poll_interval: float = 1.0,
    ) -> None:
        self.policy = policy
        self._now = now
        self._sleep = sleep
        self._stopping = stopping
        self._rng = rng or random.Random()  # retry jitter, not a secret  # nosec B311
        self._poll = poll_interval

    def deliver(self, channel: Channel, notification: Notification) -> Result:
        start = self._now()
        attempts = 0
        last: Outcome | None = None
        while not self._stopping():
            attempts += 1
            last = channel.send(notification)
            if last.status == "delivered":
                return Delivered(attempts)
            if last.status == "permanent":
                return Parked(f"{channel.name}: {last.reason}", "permanent", attempts)
            delay = self.policy.next_delay(attempts, last, self._rng)
            if self._now() + delay - start > self.policy.deadline:
                reason = f"{channel.name}: gave up after {attempts} attempts: {last.reason}"
                return Parked(reason, "deadline", attempts)
            if not self._wait(delay):
                break
        return Interrupted(attempts, last.reason if last else None)

    def _wait(self, delay: float) -> bool:
        """Wait `delay` seconds in slices; False as soon as `stopping` says so."""
        until = self._now() + delay
        while (left := until - self._now()) > 0:
            if self._stopping():
                return False
            self._sleep(min(left, self._poll))
        return True
