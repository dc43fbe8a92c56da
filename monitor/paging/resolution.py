"""When an incident has ended: told so, or quiet for long enough on the input's event time."""

from __future__ import annotations

from monitor.core.alerts import Alert
from monitor.paging.notification import epoch

# Detectors whose incidents end by themselves, and the event time after which a quiet one has.
RESOLVE_AFTER: dict[str, float] = {"terminal_failure_spike": 900.0, "small_amount_burst": 1800.0}
# Other incidents (a ghost debit) are closed by people, not by posmon: after a day of event time
# without growth they only leave their group (no more repeats), silently.
FORGET_AFTER = 86400.0


def resolution(
    alert: Alert, event_time: float, resolve_after: float, *, explicit: bool = False
) -> str | None:
    """Has the incident ended? "explicit" when told so (an operator or a detector's resolution);
    "quiet" when its evidence has not grown for `resolve_after` seconds of the input's event time
    (`event_time`: the dispatcher's event-time clock, e.g. the highest `last_seen` it has seen
    or the scoring loop's watermark, in epoch seconds, never the wall clock, so a replay
    resolves the same way); else None (still open)."""
    if explicit:
        return "explicit"
    if event_time - epoch(alert.last_seen) >= resolve_after:
        return "quiet"
    return None
