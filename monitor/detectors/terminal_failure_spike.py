"""`terminal_failure_spike`: a terminal whose attempts mostly end in network errors (an outage).

Attempts are counted by their outcome events. Every outcome whose window can hold a network
error is held back until the watermark passes it, then checks the terminal's window in
event-time order. Outcomes of terminals with no recent network error skip the hold: their
window cannot qualify, and when a network error arrives late, the outcomes after it are held
then. Routed to operations, not risk.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from monitor.alerts import Incident, alert_id, minutes
from monitor.config import TerminalFailureSpike as Settings
from monitor.config import us
from monitor.detectors.episodes import Episodes
from monitor.events import Event
from monitor.state import Reorder, WindowLog

NAME: Final = "terminal_failure_spike"

_Terminal = tuple[str, str]  # (terminal_id, merchant_id)


class TerminalFailureSpike:
    def __init__(
        self, settings: Settings, *, lateness_us: int, cap: int, max_evidence: int
    ) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = max_evidence
        self._outcomes: WindowLog[int] = WindowLog(self.window + lateness_us, cap)
        self._last_error: dict[str, int] = {}
        self._held: Reorder[_Terminal] = Reorder()
        self._episodes = Episodes(self.window, cap)

    def __len__(self) -> int:
        return len(self._held)

    def record(self, ev: Event) -> None:
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

    def release(self, watermark: int, *, inclusive: bool) -> Iterator[Incident]:
        for t, event_id, where in self._held.release(watermark, inclusive=inclusive):
            incident = self._check(t, event_id, *where)
            if incident is not None:
                yield incident

    def _check(self, t: int, event_id: str, terminal: str, merchant: str) -> Incident | None:
        """The outcome `event_id` at `t`, released in event-time order: a spike now?"""
        records = self._outcomes.window(terminal, t - self.window, t)
        attempts = len(records)
        errors = [r for r in records if r[2]]
        if (
            attempts < self.settings.min_attempts
            or len(errors) < self.settings.error_ratio * attempts
        ):
            return None

        def open_incident(first: tuple[int, str, int]) -> Incident:
            return Incident(
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
                details={
                    "window_s": self.settings.window,
                    "min_attempts": self.settings.min_attempts,
                    "error_ratio_threshold": self.settings.error_ratio,
                },
            )

        incident, fresh = self._episodes.qualify(terminal, t, errors, open_incident)
        if not fresh:
            return None
        incident.count += len(fresh)
        for rt, rid, _ in fresh:
            incident.add_evidence(rt, rid)
        peak = max(len(errors) / attempts, _float(incident.details.get("peak_error_ratio")))
        incident.details.update(
            attempts_in_window=attempts,
            errors_in_window=len(errors),
            peak_error_ratio=round(peak, 4),
        )
        incident.summary = (
            f"Terminal {terminal} (merchant {merchant}): {len(errors)} of {attempts}"
            f" attempts within {minutes(self.settings.window)} ended in a network error,"
            f" {incident.count} in this outage so far: device or link fault"
        )
        return incident

    def advance(self, watermark: int) -> None:
        self._outcomes.advance(watermark)

    def sweep(self, watermark: int) -> None:
        self._outcomes.sweep()
        self._episodes.expire(watermark)
        cutoff = watermark - self.window
        for terminal in [k for k, t in self._last_error.items() if t < cutoff]:
            del self._last_error[terminal]


def _float(value: object) -> float:
    return value if isinstance(value, float) else 0.0
