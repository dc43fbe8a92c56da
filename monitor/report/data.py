"""The report's inputs: a replay's alerts (each id's final state) and dead letters (by reason),
the money at risk they add up to, and which alerts lie far from the rest in time."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import ValidationError

from monitor.core.alerts import Alert, is_newer
from monitor.core.text import printable

MONEY_DETECTORS = ("failed_then_debited", "duplicate_debit")
SEVERITIES = ("info", "warning", "critical")
# The largest amount and count an alert may carry: the integers a float holds exactly (charts
# draw with floats; a 400-digit amount overflows one, a 5,000-digit count cannot be printed).
# No alert of `posmon replay` comes near: decode bounds one event's amount to 999,999,999,999.
# A hand-made file beyond it is refused at its line, not a crash later.
MAX_EXACT = 2**53
# An alert is far from the rest when its `first_seen` is farther from the median than
# FAR_MADS median absolute deviations and than MIN_REACH: a clock reset to 1970 or a year-1
# typo, which would otherwise stretch the time chart over decades and squeeze the replay into
# one bar. No alert of a replay of up to three months is ever far; of a longer one, only when
# most alerts crowd into a small part of it (and then the far ones are listed, not lost).
FAR_MADS = 10
MIN_REACH = timedelta(days=90)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


class ReportError(Exception):
    """The report cannot be built: an input is missing or is not what `posmon replay` writes."""


@dataclass(frozen=True, slots=True)
class MoneyRow:
    """Money at risk in one currency, in minor units."""

    currency: str
    by_detector: dict[str, int]
    given_back: int  # of the total: alerts later marked `resolved` (reversed or refunded late)

    @property
    def total(self) -> int:
        return sum(self.by_detector.values())


def load_alerts(path: Path) -> list[Alert]:
    """Each alert id's final state (its last line), ordered by `first_seen` then id.

    A line that is not an alert, or holds values the report cannot draw (`_unrepresentable`),
    is a `ReportError` naming the line: the file is not what `posmon replay` writes. The
    message is `printable`: a field name of a hand-made file reaches the terminal.
    """
    final: dict[str, Alert] = {}
    for number, line in _lines(path):
        try:
            alert = Alert.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            why = printable(f"{where}: {first['msg']}")
            raise ReportError(f"{path}:{number}: not an alert ({why})") from exc
        problem = _unrepresentable(alert)
        if problem is not None:
            raise ReportError(f"{path}:{number}: not an alert posmon writes ({problem})")
        if is_newer(alert, final.get(alert.alert_id)):
            final[alert.alert_id] = alert
    return sorted(final.values(), key=lambda a: (a.first_seen, a.alert_id))


def _unrepresentable(alert: Alert) -> str | None:
    """Why the report could not draw `alert`, or None. The schema bounds neither amounts nor
    years in UTC: a 400-digit amount overflows a float, and `0001-01-01T00:00:00+01:00` is
    a valid time whose UTC date is before year 1."""
    if alert.amount_at_risk_minor is not None and alert.amount_at_risk_minor > MAX_EXACT:
        return f"amount_at_risk_minor: above {MAX_EXACT:,}"
    if alert.count > MAX_EXACT:
        return f"count: above {MAX_EXACT:,}"
    for name, time in (("first_seen", alert.first_seen), ("last_seen", alert.last_seen)):
        try:
            time.astimezone(UTC)
        except OverflowError:
            return f"{name}: outside the years 1 to 9999 in UTC"
    return None


def split_far(alerts: Sequence[Alert]) -> tuple[list[Alert], list[Alert]]:
    """The alerts near the bulk in time and those far from it (by `first_seen`, see FAR_MADS).

    Median and median absolute deviation, not mean and range: one alert in year 1 moves
    neither, whereas it would move the mean by centuries and the range by two millennia.
    Two sorts of the times: n log n, whatever their values.
    """
    if not alerts:
        return [], []
    times = [(a.first_seen - _EPOCH) // _US for a in alerts]  # exact, any year, any offset
    middle = sorted(times)[len(times) // 2]
    deviation = sorted(abs(t - middle) for t in times)[len(times) // 2]
    reach = max(FAR_MADS * deviation, MIN_REACH // _US)
    near: list[Alert] = []
    far: list[Alert] = []
    for alert, t in zip(alerts, times, strict=True):
        (near if abs(t - middle) <= reach else far).append(alert)
    return near, far


def load_dead_letter_reasons(path: Path) -> Counter[str]:
    """Dead letters counted by `reason`; their `raw` text is never read into the report."""
    reasons: Counter[str] = Counter()
    for number, line in _lines(path):
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReportError(f"{path}:{number}: not JSON ({exc.msg})") from exc
        if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
            raise ReportError(f"{path}:{number}: a dead letter needs a string 'reason'")
        reasons[record["reason"]] += 1
    return reasons


def _lines(path: Path) -> Iterable[tuple[int, str]]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ReportError(f"{path}: no such file") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportError(f"{path}: cannot read ({exc})") from exc
    return ((n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())


def money_at_risk(alerts: Iterable[Alert]) -> list[MoneyRow]:
    """The money detectors' `amount_at_risk_minor` (final states), summed per `currency`."""
    sums: dict[str, dict[str, int]] = {}
    given_back: Counter[str] = Counter()
    for alert in alerts:
        debited, currency = alert.amount_at_risk_minor, alert.currency
        if alert.detector not in MONEY_DETECTORS or currency is None or debited is None:
            continue
        row = sums.setdefault(currency, dict.fromkeys(MONEY_DETECTORS, 0))
        row[alert.detector] += debited
        if alert.details.get("resolved") is True:
            given_back[currency] += debited
    return [MoneyRow(c, sums[c], given_back[c]) for c in sorted(sums)]
