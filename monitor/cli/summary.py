"""The summary a person reads at the end of a replay or a demo (entry layer)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from monitor.channels.console import shown
from monitor.core.alerts import DETECTORS
from monitor.scoring.pipeline import Stats
from monitor.scoring.scorer import Scorer


def print_summary(
    console: Console,
    *,
    title: str,
    scorer: Scorer,
    stats: Stats,
    alerts: Path,
    dead_letters: Path,
    head: tuple[tuple[str, str], ...] = (),
    tail: tuple[tuple[str, str], ...] = (),
) -> None:
    """Events, rejects by reason, duplicates, late events, alerts by detector, the latest alert
    of each detector, and where the files are; `head` and `tail` add rows of the caller's."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what")
    table.add_column("count", justify="right")
    for row in head:
        table.add_row(*row)
    table.add_row("events scored", f"{sum(scorer.consumed.values()):,}")
    table.add_row("duplicates (redelivered event_id)", f"{scorer.duplicates:,}")
    table.add_row("late (older than the watermark)", f"{scorer.late:,}")
    for reason in sorted(stats.rejected):
        table.add_row(f"rejected: {reason}", f"{stats.rejected[reason]:,}")
    if not stats.rejected:
        table.add_row("rejected", "0")
    for detector in DETECTORS:
        if stats.raised[detector]:
            table.add_row(f"alerts: {detector}", f"{stats.raised[detector]:,}")
    table.add_row("alerts in all (distinct ids)", f"{sum(stats.raised.values()):,}")
    for row in tail:
        table.add_row(*row)
    console.print(table)
    if stats.latest:
        console.print("Latest alert of each detector:")
    for detector in DETECTORS:
        alert = stats.latest.get(detector)
        if alert is not None:  # the summary holds ids: shown as data, never read as markup
            console.print(
                Text.assemble(
                    "  ", (detector, "bold"), f" ({alert.severity}): ", shown(alert.summary)
                )
            )
    console.print(
        Text.assemble("alerts: ", shown(str(alerts)), "   dead letters: ", shown(str(dead_letters)))
    )
