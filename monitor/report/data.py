"""The report's inputs: a replay's alerts (each id's final state) and dead letters (by reason),
and the money at risk they add up to."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from monitor.core.alerts import Alert

MONEY_DETECTORS = ("failed_then_debited", "duplicate_debit")
SEVERITIES = ("info", "warning", "critical")


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
    """Each alert id's final state (its last line), ordered by `first_seen` then id."""
    final: dict[str, Alert] = {}
    for number, line in _lines(path):
        try:
            alert = Alert.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise ReportError(f"{path}:{number}: not an alert ({where}: {first['msg']})") from exc
        final[alert.alert_id] = alert
    return sorted(final.values(), key=lambda a: (a.first_seen, a.alert_id))


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
