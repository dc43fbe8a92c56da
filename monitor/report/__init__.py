"""`posmon report`: a backtest report of a replay, an HTML page with PNG charts.

The report is a pure function of its inputs: the alerts file of `posmon replay` (an alert id may
appear several times as it grows; its last line is its final state) and, optionally, its dead
letters. It reads no clock and no network, so the same inputs give the same page. It shows alert
fields only: card tokens appear solely inside the detectors' summaries (already shortened) and
dead letters are counted by reason, never shown. Every value from the data, on the page and in
the charts, is `monitor.core.text.printable` (card numbers masked, control characters escaped),
HTML-escaped on the page and drawn as plain text in the charts (no mathtext, no TeX).

Its work is bounded by its input, whatever the values: the time chart has at most a few hundred
bars, alerts far from the rest in time are listed apart rather than stretching it, and a line
holding what the charts cannot draw (a 400-digit amount, a time before year 1 in UTC) is a
`ReportError` naming the line.

The output folder is self-contained: `index.html` and the `*.png` it references relatively.
Charts are drawn on `matplotlib.figure.Figure` objects with the Agg canvas: no pyplot, no
display; the only process-wide state touched is matplotlib's two text settings, inside
`charts.plain_text` while the charts are drawn, restored after.
"""

from monitor.report.build import build_report
from monitor.report.data import ReportError

__all__ = ["ReportError", "build_report"]
