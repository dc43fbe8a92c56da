"""The report's HTML page: figures referenced relatively, every value `printable` (card numbers
masked, control characters such as bidi overrides escaped) and HTML-escaped."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from monitor.core.alerts import DETECTORS, Alert
from monitor.core.text import money, printable
from monitor.report.data import MONEY_DETECTORS, MoneyRow, money_at_risk

RECENT_CRITICAL = 20
FAR_LISTED = 20

# The style of posmon's HTML pages (this report, `posmon evaluate`'s page).
PAGE_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.5em 0 1.5em}
.note{color:#666;font-style:italic}
"""


def render_html(
    title: str,
    alerts: Sequence[Alert],
    rejects: Counter[str] | None,
    charts: set[str],
    far: Sequence[Alert] = (),
) -> str:
    """The page; `far` are the alerts left off the time chart (`split_far`), listed apart."""
    title = printable(title)

    def chart(name: str, alt: str, missing: str) -> str:
        if name in charts:
            return f'<img src="{name}" alt="{escape(alt)}">'
        return f'<p class="note">{escape(missing)}</p>'

    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{PAGE_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _overview(alerts, rejects, len(far)),
        "<h2>Alerts over time</h2>",
        chart("alerts_over_time.png", "alerts over time by detector", "No alerts."),
        _far_table(far),
        "<h2>Alerts by detector</h2>",
        _detector_table(alerts),
        "<h2>Money at risk</h2>",
        _money_table(money_at_risk(alerts)),
        chart("money_at_risk.png", "money at risk by currency", "No money at risk."),
        "<h2>Top merchants and terminals</h2>",
        chart("top_merchants.png", "top merchants by incidents", "No alerts."),
        chart("top_terminals.png", "top terminals by incidents", "No alerts."),
        "<h2>Severity</h2>",
        chart("severity.png", "alerts by severity", "No alerts."),
        "<h2>Model scores</h2>",
        chart("scores.png", "model score distribution", "No model scores in this replay."),
    ]
    if rejects is not None:
        parts.append("<h2>Dead letters</h2>")
        parts.append(chart("dead_letters.png", "dead letters by reason", "No dead letters."))
    parts.append(f"<h2>Most recent critical alerts (up to {RECENT_CRITICAL})</h2>")
    parts.append(_critical_table(alerts))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _time(t: datetime) -> str:
    """`2026-11-02 12:00:00 UTC`; years before 1000 with four digits too (unlike `strftime`)."""
    return f"{t.astimezone(UTC).replace(tzinfo=None).isoformat(' ', 'seconds')} UTC"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{_cell(c)}</td>' if i in numeric else f"<td>{_cell(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cell(value: str) -> str:
    return escape(printable(value))


def _overview(alerts: Sequence[Alert], rejects: Counter[str] | None, far: int) -> str:
    if not alerts:
        return '<p class="note">The replay raised no alerts.</p>'
    start, end = min(a.first_seen for a in alerts), max(a.last_seen for a in alerts)
    items = [
        f"Event time covered by alerts: {_time(start)} to {_time(end)}",
        f"Alerts (distinct ids, final state): {len(alerts):,}",
        f"Occurrences they stand for (sum of count): {sum(a.count for a in alerts):,}",
    ]
    if far:
        items.append(f"Far from the rest in time, listed apart from the time chart: {far:,}")
    if rejects is not None:
        items.append(f"Dead letters: {sum(rejects.values()):,}")
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def _detector_table(alerts: Sequence[Alert]) -> str:
    if not alerts:
        return '<p class="note">No alerts.</p>'
    ids: Counter[str] = Counter(a.detector for a in alerts)
    occurrences = Counter[str]()
    critical = Counter[str]()
    for a in alerts:
        occurrences[a.detector] += a.count
        critical[a.detector] += a.severity == "critical"
    rows = [
        (d, f"{ids[d]:,}", f"{occurrences[d]:,}", f"{critical[d]:,}") for d in DETECTORS if ids[d]
    ]
    return _table(("detector", "alerts", "occurrences", "critical"), rows, {1, 2, 3})


def _money_table(rows: Sequence[MoneyRow]) -> str:
    if not rows:
        return '<p class="note">No failed_then_debited or duplicate_debit alerts.</p>'
    header = ("currency", *MONEY_DETECTORS, "total", "of which given back later")
    body = [
        (
            r.currency,
            *(money(r.by_detector[d], r.currency) for d in MONEY_DETECTORS),
            money(r.total, r.currency),
            money(r.given_back, r.currency),
        )
        for r in rows
    ]
    return _table(header, body, {1, 2, 3, 4})


def _far_table(far: Sequence[Alert]) -> str:
    """The alerts whose `first_seen` lies far from the rest (a clock reset, a typo'd year)."""
    if not far:
        return ""
    rows = [
        (_time(a.first_seen), a.detector, a.merchant_id, a.terminal_id, a.alert_id)
        for a in far[:FAR_LISTED]
    ]
    more = f" ({FAR_LISTED} listed)" if len(far) > FAR_LISTED else ""
    what = "alert" if len(far) == 1 else "alerts"
    note = (
        f'<p class="note">{len(far):,} {what} far from the rest in time{more}, left off the'
        " chart so that it shows the replay rather than the years between:</p>"
    )
    return note + _table(
        ("first seen", "detector", "merchant", "terminal", "alert id"), rows, set()
    )


def _critical_table(alerts: Sequence[Alert]) -> str:
    critical = [a for a in alerts if a.severity == "critical"]
    if not critical:
        return '<p class="note">No critical alerts.</p>'
    recent = sorted(critical, key=lambda a: (a.last_seen, a.alert_id), reverse=True)
    rows = [
        (_time(a.last_seen), a.detector, a.merchant_id, a.terminal_id, a.summary)
        for a in recent[:RECENT_CRITICAL]
    ]
    return _table(("last seen", "detector", "merchant", "terminal", "summary"), rows, set())
