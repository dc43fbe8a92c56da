"""The report's PNG charts, drawn on `matplotlib.figure.Figure` objects (Agg, no pyplot)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import UTC, timedelta

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from monitor.core.alerts import DETECTORS, Alert
from monitor.core.text import minor_exponent, money
from monitor.report.data import MONEY_DETECTORS, SEVERITIES, MoneyRow

SEVERITY_COLOURS = {"info": "#4c78a8", "warning": "#f58518", "critical": "#e45756"}
TOP = 10
_HOURLY_UP_TO = timedelta(days=7)  # longer replays are binned by day to keep the bars readable


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
