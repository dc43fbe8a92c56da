"""The report's PNG charts, drawn on `matplotlib.figure.Figure` objects (Agg, no pyplot).

Every chart is bounded whatever its input: at most MAX_BARS bars in time, TOP names, MAX_ROWS
currencies, LABEL_CHARS characters a label. Text from the data is drawn as written: `printable`
(card numbers masked, control characters escaped), and under `plain_text`, no mathtext or TeX
(a merchant `$\\frac{$` would end the report, `$x^{2}$` would be drawn as a formula).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, StrMethodFormatter

from monitor.core.alerts import DETECTORS, Alert
from monitor.core.text import minor_exponent, money, printable
from monitor.report.data import MONEY_DETECTORS, SEVERITIES, MoneyRow

SEVERITY_COLOURS = {"info": "#4c78a8", "warning": "#f58518", "critical": "#e45756"}
TOP = 10
MAX_BARS = 366  # a year of days; a longer range is binned by week, then by several weeks
MAX_ROWS = 8  # currencies drawn (the page's table lists them all)
LABEL_CHARS = 40
_HOURLY_UP_TO = timedelta(days=7)  # longer replays are binned by day to keep the bars readable
_HOUR, _DAY, _WEEK = timedelta(hours=1), timedelta(days=1), timedelta(weeks=1)


def plain_text() -> AbstractContextManager[None]:
    """Text drawn as written while the charts are made and saved: matplotlib reads
    `text.parse_math` and `text.usetex` when it creates each text object, tick labels included,
    which happens at `savefig`. TeX off too, whatever a user's matplotlibrc says: with it on,
    a label would be a LaTeX program."""
    return matplotlib.rc_context({"text.parse_math": False, "text.usetex": False})


def label(text: str) -> str:
    """A value from the data as a chart label: `printable`, cut to LABEL_CHARS."""
    text = printable(text)
    return text if len(text) <= LABEL_CHARS else f"{text[: LABEL_CHARS - 1]}…"


def _figure(height: float = 3.6) -> Figure:
    return Figure(figsize=(8.0, height), dpi=100, layout="constrained")


def time_bins(start: datetime, end: datetime) -> tuple[datetime, timedelta, int, str]:
    """The time chart's first bin start, bin width, bin count and width's name: hours for up to
    a week of data, then the narrowest of day, week or a whole number of weeks that keeps the
    chart within MAX_BARS bars, however far apart `start` and `end` (UTC) are."""
    if end - start <= _HOURLY_UP_TO:
        origin = start.replace(minute=0, second=0, microsecond=0)
        return origin, _HOUR, (end - origin) // _HOUR + 1, "hour"
    origin = start.replace(hour=0, minute=0, second=0, microsecond=0)
    days = (end - origin) // _DAY + 1
    weeks = 1 if days <= MAX_BARS else math.ceil(days / (7 * MAX_BARS))
    step = _DAY if days <= MAX_BARS else weeks * _WEEK
    name = "day" if step == _DAY else "week" if weeks == 1 else f"{weeks} weeks"
    return origin, step, (end - origin) // step + 1, name


def chart_over_time(alerts: Sequence[Alert], far: int = 0) -> Figure | None:
    """New alerts per time bin by detector; `alerts` are those near the bulk (`split_far`),
    `far` the number left out, said under the axis."""
    if not alerts:
        return None
    start = min(a.first_seen for a in alerts).astimezone(UTC)
    end = max(a.first_seen for a in alerts).astimezone(UTC)
    origin, step, bins, name = time_bins(start, end)
    hourly = step == _HOUR
    counts = {d: [0] * bins for d in DETECTORS}
    for alert in alerts:
        counts[alert.detector][(alert.first_seen - origin) // step] += 1
    fig = _figure(4.2)
    ax = fig.add_subplot()
    bottom = [0] * bins
    for detector in DETECTORS:
        if any(counts[detector]):
            ax.bar(range(bins), counts[detector], width=0.9, bottom=bottom, label=detector)
            bottom = [b + c for b, c in zip(bottom, counts[detector], strict=True)]
    every = max(1, bins // 12)
    ticks = list(range(0, bins, every))
    starts = [origin + i * step for i in ticks]
    names = [f"{t:%m-%d %H:00}" if hourly else t.date().isoformat() for t in starts]  # 0001-..
    ax.set_xticks(ticks, names, rotation=30, ha="right")
    ax.set_title(f"New alerts per {name} by detector (first_seen, UTC)")
    apart = f"; {far:,} far from the rest listed apart" if far else ""
    ax.set_xlabel(f"event time (UTC){apart}")
    ax.set_ylabel("alerts")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(loc="outside right upper", fontsize="small", title="detector")
    return fig


def chart_money(rows: Sequence[MoneyRow]) -> Figure | None:
    """One panel per currency: the MAX_ROWS largest totals in major units (a rough ranking, as
    currencies do not compare; a real replay has fewer), in the order of the page's table."""
    if not rows:
        return None
    every = len(rows)
    largest = sorted(rows, key=lambda r: (-r.total / 10 ** minor_exponent(r.currency), r.currency))
    rows = sorted(largest[:MAX_ROWS], key=lambda r: r.currency)
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
    part = f", the {len(rows)} largest of {every} currencies" if every > len(rows) else ""
    fig.suptitle(f"Money at risk by currency (failed_then_debited, duplicate_debit{part})")
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
            ax.barh(range(len(top)), n, left=left, color=colour, label=severity)
            left = [x + y for x, y in zip(left, n, strict=True)]
    _names(ax, top)
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
    """A histogram of the finite scores (JSON allows `1e400`, which reads as infinity)."""
    scores = [a.score for a in alerts if a.score is not None and math.isfinite(a.score)]
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
    """The TOP most frequent reasons (a hand-made file may hold any number of them)."""
    names = sorted(reasons, key=lambda r: (-reasons[r], r))[:TOP]
    names.reverse()  # the largest at the top
    fig = _figure(1.2 + 0.35 * len(names))
    ax = fig.add_subplot()
    bars = ax.barh(range(len(names)), [reasons[r] for r in names], color="#9d755d")
    ax.bar_label(bars, padding=3)
    _names(ax, names)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    largest = f", the {len(names)} most frequent of {len(reasons)}" if len(reasons) > TOP else ""
    ax.set_title(f"Dead letters by reason (rejected input lines{largest})")
    ax.set_xlabel("lines")
    return fig


def _names(ax: Axes, names: Sequence[str]) -> None:
    """Values from the data as the y tick labels of bars drawn at 0, 1, ...: positions, not
    matplotlib's categories, so that two long names cut to the same label stay two bars."""
    ax.set_yticks(range(len(names)), [label(n) for n in names])
