"""`terminal_failure_spike`: a terminal whose attempts mostly end in network errors (an outage).

Attempts are counted by their outcome events. Every outcome whose window can hold a network
error is held back until the watermark passes it, then checks the terminal's window in
event-time order. Outcomes of terminals with no recent network error skip the hold: their
window cannot qualify, and when a network error arrives late, the outcomes after it are held
then. Routed to operations, not risk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Final

from pydantic import Field

from monitor.core.alerts import alert_id
from monitor.core.durations import PositiveInt, Seconds, us
from monitor.core.events import Event
from monitor.core.text import minutes
from monitor.scoring.attempts import Attempt
from monitor.scoring.detectors.base import DetectorSettings, Found, Hooks, Ordered, Shared
from monitor.scoring.detectors.episodes import Episodes
from monitor.scoring.incident import Incident
from monitor.scoring.state import Reorder, WindowLog

NAME: Final = "terminal_failure_spike"

_Terminal = tuple[str, str]  # (terminal_id, merchant_id)


class Settings(DetectorSettings):
    min_attempts: PositiveInt = 10
    error_ratio: Annotated[float, Field(gt=0, le=1)] = 0.5
    window: Seconds = 300.0

    def build(self, shared: Shared, rank: int) -> TerminalFailureSpike:
        return TerminalFailureSpike(self, shared)


@dataclass(slots=True, kw_only=True)
class Spike(Incident):
    """One outage of a terminal: its window at the latest growth and the worst ratio seen."""

    window_s: float
    min_attempts: int
    error_ratio_threshold: float
    attempts_in_window: int = 0
    errors_in_window: int = 0
    peak_error_ratio: float = 0.0

    def details(self) -> dict[str, object]:
        return {
            "window_s": self.window_s,
            "min_attempts": self.min_attempts,
            "error_ratio_threshold": self.error_ratio_threshold,
            "attempts_in_window": self.attempts_in_window,
            "errors_in_window": self.errors_in_window,
            "peak_error_ratio": self.peak_error_ratio,
        }


class TerminalFailureSpike(Ordered):
    def __init__(self, settings: Settings, shared: Shared) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = shared.max_evidence
        self._outcomes: WindowLog[int] = WindowLog(self.window + shared.lateness_us, shared.cap)
        self._last_error: dict[str, int] = {}
        self._held: Reorder[_Terminal] = Reorder()
        self._episodes: Episodes[Spike] = Episodes(self.window, shared.cap)

    def __len__(self) -> int:
        return len(self._held)

    def hooks(self) -> Hooks:
        return Hooks(
            on_attempt={
                "auth_approved": self.on_outcome,
                "auth_declined": self.on_outcome,
                "network_error": self.on_outcome,
            }
        )

    def on_outcome(self, ev: Event, attempt: Attempt) -> Found:
        """An outcome arrived: log it, and hold it back if its window may qualify."""
        terminal, t = ev.terminal_id, ev.t
        is_error = ev.kind == "network_error"
        self._outcomes.append(terminal, t, ev.event_id, int(is_error))
        where = (terminal, ev.merchant_id)
        last_error = self._last_error.get(terminal)
        if is_error:
            if last_error is None or t > last_error:
                self._last_error[terminal] = t
            # The error itself, and outcomes that arrived before it but come after it in time:
            # their windows count it.
            for rt, event_id, _ in self._outcomes.window(terminal, t - 1, t + self.window - 1):
                self._held.push(rt, event_id, where)
        elif (
            last_error is not None
            and last_error > t - self.window
            and (
                last_error <= t
                or any(r[2] for r in self._outcomes.window(terminal, t - self.window, t))
            )
        ):
            self._held.push(t, ev.event_id, where)
        return None

    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Spike]:
        for t, event_id, where in self._held.release(watermark, inclusive=inclusive):
            incident = self._check(t, event_id, *where)
            if incident is not None:
                yield incident

    def _check(self, t: int, event_id: str, terminal: str, merchant: str) -> Spike | None:
        """The outcome `event_id` at `t`, released in event-time order: a spike now?"""
        records = self._outcomes.window(terminal, t - self.window, t)
        attempts = len(records)
        errors = [r for r in records if r[2]]
        if (
            attempts < self.settings.min_attempts
            or len(errors) < self.settings.error_ratio * attempts
        ):
            return None

        def open_incident(first: tuple[int, str, int]) -> Spike:
            return Spike(
                alert_id=alert_id(NAME, terminal, event_id),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=terminal,
                merchant_id=merchant,
                card_id=None,
                first_seen=first[0],
                last_seen=first[0],
                max_evidence=self.max_evidence,
                count=0,
                window_s=self.settings.window,
                min_attempts=self.settings.min_attempts,
                error_ratio_threshold=self.settings.error_ratio,
            )

        incident, fresh = self._episodes.qualify(terminal, t, errors, open_incident)
        if not fresh:
            return None
        incident.count += len(fresh)
        for rt, rid, _ in fresh:
            incident.add_evidence(rt, rid)
        peak = max(len(errors) / attempts, incident.peak_error_ratio)
        incident.attempts_in_window = attempts
        incident.errors_in_window = len(errors)
        incident.peak_error_ratio = round(peak, 4)
        incident.summary = (
            f"Terminal {terminal} (merchant {merchant}): {len(errors)} of {attempts}"
            f" attempts within {minutes(self.settings.window)} ended in a network error,"
            f" {incident.count} in this outage so far: device or link fault"
        )
        return incident

    def advance(self, watermark: int) -> None:
        self._outcomes.advance(watermark)

    def sizes(self) -> dict[str, int]:
        return {"held_back": len(self._held)}

    def sweep(self, watermark: int) -> None:
        self._outcomes.sweep()
        self._episodes.expire(watermark)
        cutoff = watermark - self.window
        for terminal in [k for k, t in self._last_error.items() if t < cutoff]:
            del self._last_error[terminal]
