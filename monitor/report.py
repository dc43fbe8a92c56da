"""`posmon report`: a backtest report of a replay, an HTML page with PNG charts.

The report is a pure function of its inputs: the alerts file of `posmon replay` (an alert id may
appear several times as it grows; its last line is its final state) and, optionally, its dead
letters. It reads no clock and no network, so the same inputs give the same page. It shows alert
fields only: card tokens appear solely inside the detectors' summaries (already shortened) and
dead letters are counted by reason, never shown, so no card number can reach the page.

The output folder is self-contained: `index.html` and the `*.png` it references relatively.
Charts are drawn on `matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, no
display, no process-wide figure state.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter
from pydantic import ValidationError

from monitor.alerts import DETECTORS, Alert, money

MONEY_DETECTORS = ("failed_then_debited", "duplicate_debit")
SEVERITIES = ("info", "warning", "critical")
SEVERITY_COLOURS = {"info": "#4c78a8", "warning": "#f58518", "critical": "#e45756"}
RECENT_CRITICAL = 20
TOP = 10
_HOURLY_UP_TO = timedelta(days=7)  # longer replays are binned by day to keep the bars readable


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


def build_report(
    alerts_path: Path,
    out_dir: Path,
    *,
    dead_letters: Path | None = None,
    title: str = "posmon backtest",
) -> Path:
    """Write `out_dir/index.html` and its charts from a replay's alerts; return the HTML path.

    Raises `ReportError` when an input file is missing or holds a line that is not an alert
    (or, for dead letters, not a JSON object with a `reason`).
    """
    alerts = load_alerts(alerts_path)
    rejects = load_dead_letter_reasons(dead_letters) if dead_letters is not None else None
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = {
        "alerts_over_time.png": chart_over_time(alerts),
        "money_at_risk.png": chart_money(money_at_risk(alerts)),
        "top_merchants.png": chart_top(alerts, "merchant"),
        "top_terminals.png": chart_top(alerts, "terminal"),
        "severity.png": chart_severity(alerts),
        "scores.png": chart_scores(alerts),
        "dead_letters.png": chart_dead_letters(rejects) if rejects else None,
    }
    written: set[str] = set()
    for name, figure in charts.items():
        target = out_dir / name
        if figure is None:
            target.unlink(missing_ok=True)  # a chart of an earlier report must not linger
            continue
        FigureCanvasAgg(figure)  # attaches itself to the figure: PNG drawn by Agg, no display
        figure.savefig(target, format="png", metadata={"Software": None})
        written.add(name)
    page = out_dir / "index.html"
    page.write_text(render_html(title, alerts, rejects, written), encoding="utf-8")
    return page


# --- inputs ---------------------------------------------------------------------------------


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


# --- figures ----------------------------------------------------------------------------------


def money_at_risk(alerts: Iterable[Alert]) -> list[MoneyRow]:
    """`details.debited_minor` of the money detectors' final states, summed per currency."""
    sums: dict[str, dict[str, int]] = {}
    given_back: Counter[str] = Counter()
    for alert in alerts:
        debited, currency = alert.details.get("debited_minor"), alert.details.get("currency")
        if alert.detector not in MONEY_DETECTORS or not isinstance(currency, str):
            continue
        if not isinstance(debited, int) or isinstance(debited, bool):
            continue
        row = sums.setdefault(currency, dict.fromkeys(MONEY_DETECTORS, 0))
        row[alert.detector] += debited
        if alert.details.get("resolved") is True:
            given_back[currency] += debited
    return [MoneyRow(c, sums[c], given_back[c]) for c in sorted(sums)]


def minor_exponent(currency: str) -> int:
    """The ISO 4217 exponent `monitor.alerts.money` uses, read from its own rendering."""
    rendered = money(0, currency).split(" ")[0]
    return len(rendered.partition(".")[2])


def _figure(height: float = 3.6) -> Figure:
    return Figure(figsize=(8.0, height), dpi=100, layout="constrained")


def chart_over_time(alerts: Sequence[Alert]) -> Figure | None:
    if not alerts:
        return None
    start = min(a.first_seen for a in alerts).astimezone(UTC)
    end = max(a.first_seen for a in alerts).astimezone(UTC)
    hourly = end - start <= _HOURLY_UP_TO
    step = timedelta(hours=1) if hourly else timedelta(days=1)
    origin = start.replace(minute=0, second=0, microsecond=0)
    if not hourly:
        origin = origin.replace(hour=0)
    bins = int((end - origin) / step) + 1
    counts = {d: [0] * bins for d in DETECTORS}
    for alert in alerts:
        counts[alert.detector][int((alert.first_seen - origin) / step)] += 1
    fig = _figure(4.2)
    ax = fig.add_subplot()
    bottom = [0] * bins
    for detector in DETECTORS:
        if any(counts[detector]):
            ax.bar(range(bins), counts[detector], width=0.9, bottom=bottom, label=detector)
            bottom = [b + c for b, c in zip(bottom, counts[detector], strict=True)]
    every = max(1, bins // 12)
    ticks = list(range(0, bins, every))
    fmt = "%m-%d %H:00" if hourly else "%Y-%m-%d"
    ax.set_xticks(
        ticks, [(origin + i * step).strftime(fmt) for i in ticks], rotation=30, ha="right"
    )
    ax.set_title(f"New alerts per {'hour' if hourly else 'day'} by detector (first_seen, UTC)")
    ax.set_xlabel("event time (UTC)")
    ax.set_ylabel("alerts")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside right upper", fontsize="small", title="detector")
    return fig


def chart_money(rows: Sequence[MoneyRow]) -> Figure | None:
    if not rows:
        return None
    fig = _figure(1.2 + 1.1 * len(rows))
    for i, row in enumerate(rows, 1):
        ax = fig.add_subplot(len(rows), 1, i)
        scale = 10 ** minor_exponent(row.currency)
        values = [row.by_detector[d] / scale for d in MONEY_DETECTORS]  # bar lengths only
        bars = ax.barh(MONEY_DETECTORS, values, color=["#e45756", "#b279a2"])
        labels = [money(row.by_detector[d], row.currency) for d in MONEY_DETECTORS]
        ax.bar_label(bars, labels, padding=3)
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
        ax.set_xlabel(f"debited ({row.currency}, major units)")
        ax.set_xlim(0, max(values) * 1.35 or 1)
        ax.set_title(f"{row.currency}: {money(row.total, row.currency)} at risk", fontsize=10)
    fig.suptitle("Money at risk by currency (failed_then_debited, duplicate_debit)")
    return fig


def chart_top(alerts: Sequence[Alert], by: str) -> Figure | None:
    if not alerts:
        return None

    def key(alert: Alert) -> str:
        return alert.merchant_id if by == "merchant" else alert.terminal_id

    totals = Counter(key(a) for a in alerts)
    top = [name for name, _ in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP]]
    top.reverse()  # the largest at the top of a horizontal bar chart
    fig = _figure(1.2 + 0.3 * len(top))
    ax = fig.add_subplot()
    left = [0] * len(top)
    for severity in SEVERITIES:
        n = [sum(1 for a in alerts if key(a) == name and a.severity == severity) for name in top]
        if any(n):
            colour = SEVERITY_COLOURS[severity]
            ax.barh(top, n, left=left, color=colour, label=severity)
            left = [x + y for x, y in zip(left, n, strict=True)]
    ax.set_title(f"Top {len(top)} {by}s by incidents (distinct alerts)")
    ax.set_xlabel("alerts")
    ax.set_ylabel(by)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize="small")
    return fig


def chart_severity(alerts: Sequence[Alert]) -> Figure | None:
    if not alerts:
        return None
    counts: Counter[str] = Counter(a.severity for a in alerts)
    fig = _figure(2.4)
    ax = fig.add_subplot()
    bars = ax.barh(
        SEVERITIES, [counts[s] for s in SEVERITIES], color=[SEVERITY_COLOURS[s] for s in SEVERITIES]
    )
    ax.bar_label(bars, padding=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Alerts by severity")
    ax.set_xlabel("alerts")
    return fig


def chart_scores(alerts: Sequence[Alert]) -> Figure | None:
    scores = [a.score for a in alerts if a.score is not None]
    if not scores:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(scores, bins=min(30, max(5, len(scores) // 3)), color="#54a24b")
    ax.set_title(f"Model score distribution ({len(scores)} scored alerts)")
    ax.set_xlabel("score")
    ax.set_ylabel("alerts")
    return fig


def chart_dead_letters(reasons: Counter[str]) -> Figure:
    names = sorted(reasons, key=lambda r: (reasons[r], r))
    fig = _figure(1.2 + 0.35 * len(names))
    ax = fig.add_subplot()
    ax.bar_label(ax.barh(names, [reasons[r] for r in names], color="#9d755d"), padding=3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("Dead letters by reason (rejected input lines)")
    ax.set_xlabel("lines")
    return fig


# --- page -------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.5em 0 1.5em}
.note{color:#666;font-style:italic}
"""


def render_html(
    title: str, alerts: Sequence[Alert], rejects: Counter[str] | None, charts: set[str]
) -> str:
    def chart(name: str, alt: str, missing: str) -> str:
        if name in charts:
            return f'<img src="{name}" alt="{escape(alt)}">'
        return f'<p class="note">{escape(missing)}</p>'

    parts = [
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}'
        f"</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        _overview(alerts, rejects),
        "<h2>Alerts over time</h2>",
        chart("alerts_over_time.png", "alerts over time by detector", "No alerts."),
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
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: set[int]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="n">{escape(c)}</td>' if i in numeric else f"<td>{escape(c)}</td>"
            for i, c in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _overview(alerts: Sequence[Alert], rejects: Counter[str] | None) -> str:
    if not alerts:
        return '<p class="note">The replay raised no alerts.</p>'
    start, end = min(a.first_seen for a in alerts), max(a.last_seen for a in alerts)
    items = [
        f"Event time covered by alerts: {_time(start)} to {_time(end)}",
        f"Alerts (distinct ids, final state): {len(alerts):,}",
        f"Occurrences they stand for (sum of count): {sum(a.count for a in alerts):,}",
    ]
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
