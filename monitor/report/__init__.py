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

from monitor.report.build import build_report
from monitor.report.data import ReportError

__all__ = ["ReportError", "build_report"]
