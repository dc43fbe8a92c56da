"""Alerts on a terminal (`posmon demo`, local runs): one line per alert, colour by severity."""

from __future__ import annotations

from rich.console import Console
from rich.text import Text

from monitor.core.text import printable
from monitor.paging.notification import DELIVERED, Notification, Outcome

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


def shown(text: str, style: str = "") -> Text:
    """A value from the data (an id, a summary, a path) for a rich console: `printable` (card
    numbers masked, control characters escaped) inside a `Text`, which rich never parses, so
    `[/bold]` cannot break the output, `[link=...]` cannot hide the value behind a hyperlink
    and `:warning:` stays words. Styles go around it, never into it."""
    return Text(printable(text), style=style)


class ConsoleChannel:
    """Prints each alert of a notification. A closed or broken stream (`OSError`) is a `retry`:
    the notification stays undelivered rather than being lost silently."""

    name = "console"
    supports_resolve = True

    def __init__(self, console: Console) -> None:
        self._console = console

    def __repr__(self) -> str:
        return "ConsoleChannel()"

    def send(self, notification: Notification) -> Outcome:
        try:
            if notification.summary and len(notification.alerts) > 1:
                self._console.print(shown(notification.summary, "bold"))
            for alert in notification.alerts:
                state = "RESOLVED " if notification.kind == "resolve" else ""
                line = Text.assemble(
                    (f"{state}[{alert.severity}] {alert.detector}", _STYLE[alert.severity]),
                    " ",
                    shown(alert.summary),
                    " ",
                    shown(f"({alert.alert_id})", "dim"),
                )
                self._console.print(line)
        except OSError as exc:
            return Outcome("retry", f"console: {exc}")
        return DELIVERED
