"""Alerts on a terminal (`posmon demo`, local runs): one line per alert, colour by severity."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape

from monitor.paging.notification import DELIVERED, Notification, Outcome

_STYLE = {"critical": "bold red", "warning": "yellow", "info": "cyan"}


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
                self._console.print(f"[bold]{escape(notification.summary)}[/bold]")
            for alert in notification.alerts:
                style = _STYLE[alert.severity]
                state = "RESOLVED " if notification.kind == "resolve" else ""
                self._console.print(
                    f"[{style}]{state}{escape(f'[{alert.severity}]')} {alert.detector}[/{style}]"
                    f" {escape(alert.summary)} [dim]({alert.alert_id})[/dim]",
                    highlight=False,
                )
        except OSError as exc:
            return Outcome("retry", f"console: {exc}")
        return DELIVERED
