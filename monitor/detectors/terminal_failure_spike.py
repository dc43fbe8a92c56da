"""`terminal_failure_spike`: a terminal whose attempts mostly end in network errors (an outage).

Attempts are counted by their outcome events; each network error, released behind the
watermark in event-time order, checks the terminal's window. Routed to operations, not risk.
"""

from __future__ import annotations

from typing import Final

from monitor.alerts import Incident, alert_id, minutes
from monitor.config import TerminalFailureSpike as Settings
from monitor.config import us
from monitor.detectors.episodes import Episodes
from monitor.events import Event
from monitor.state import WindowLog

NAME: Final = "terminal_failure_spike"


class TerminalFailureSpike:
    def __init__(self, settings: Settings, *, cap: int, max_evidence: int) -> None:
        self.settings = settings
        self.window = us(settings.window)
        self.max_evidence = max_evidence
        self._outcomes = WindowLog(cap)
        self._episodes = Episodes(self.window, cap)

    def record(self, ev: Event) -> None:
        self._outcomes.append(ev.terminal_id, ev.t, ev.event_id, ev.kind == "network_error")

    def release(self, ev: Event) -> Incident | None:
        records = self._outcomes.window(ev.terminal_id, ev.t - self.window, ev.t)
        attempts = len(records)
        errors = [r for r in records if r[2]]
        if (
            attempts < self.settings.min_attempts
            or len(errors) < self.settings.error_ratio * attempts
        ):
            return None

        def open_incident(first: tuple[int, str, bool]) -> Incident:
            return Incident(
                alert_id=alert_id(NAME, ev.terminal_id, ev.event_id),
                detector=NAME,
                severity=self.settings.severity,
                terminal_id=ev.terminal_id,
                merchant_id=ev.merchant_id,
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

        incident, fresh = self._episodes.qualify(ev.terminal_id, ev.t, errors, open_incident)
        if not fresh:
            return None
        incident.count += len(fresh)
        for t, event_id, _ in fresh:
            incident.add_evidence(t, event_id)
        peak = max(len(errors) / attempts, _float(incident.details.get("peak_error_ratio")))
        incident.details.update(
            attempts_in_window=attempts,
            errors_in_window=len(errors),
            peak_error_ratio=round(peak, 4),
        )
        incident.summary = (
            f"Terminal {ev.terminal_id} (merchant {ev.merchant_id}): {len(errors)} of {attempts}"
            f" attempts within {minutes(self.settings.window)} ended in a network error,"
            f" {incident.count} in this outage so far: device or link fault"
        )
        return incident

    def sweep(self, watermark: int, lateness_us: int) -> None:
        self._outcomes.sweep(watermark - lateness_us - self.window)
        self._episodes.expire(watermark)


def _float(value: object) -> float:
    return value if isinstance(value, float) else 0.0
