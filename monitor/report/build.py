"""`build_report`: the report folder from a replay's alerts (and dead letters)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg

from monitor.report.charts import (
    chart_dead_letters,
    chart_money,
    chart_over_time,
    chart_scores,
    chart_severity,
    chart_top,
    plain_text,
)
from monitor.report.data import load_alerts, load_dead_letter_reasons, money_at_risk, split_far
from monitor.report.page import render_html


def build_report(
    alerts_path: Path,
    out_dir: Path,
    *,
    dead_letters: Path | None = None,
    title: str = "posmon backtest",
) -> Path:
    """Write `out_dir/index.html` and its charts from a replay's alerts; return the HTML path.

    Raises `ReportError` when an input file is missing or holds a line that is not an alert
    posmon writes (or, for dead letters, not a JSON object with a `reason`). Alerts far from
    the rest in time are listed apart, not drawn on the time chart (`split_far`).
    """
    alerts = load_alerts(alerts_path)
    rejects = load_dead_letter_reasons(dead_letters) if dead_letters is not None else None
    near, far = split_far(alerts)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: set[str] = set()
    with plain_text():  # ids drawn as written, tick labels included (drawn at savefig)
        charts = {
            "alerts_over_time.png": chart_over_time(near, len(far)),
            "money_at_risk.png": chart_money(money_at_risk(alerts)),
            "top_merchants.png": chart_top(alerts, "merchant"),
            "top_terminals.png": chart_top(alerts, "terminal"),
            "severity.png": chart_severity(alerts),
            "scores.png": chart_scores(alerts),
            "dead_letters.png": chart_dead_letters(rejects) if rejects else None,
        }
        for name, figure in charts.items():
            target = out_dir / name
            if figure is None:
                target.unlink(missing_ok=True)  # a chart of an earlier report must not linger
                continue
            FigureCanvasAgg(figure)  # attaches itself to the figure: PNG drawn by Agg, no display
            figure.savefig(target, format="png", metadata={"Software": None})
            written.add(name)
    page = out_dir / "index.html"
    page.write_text(render_html(title, alerts, rejects, written, far), encoding="utf-8")
    return page
