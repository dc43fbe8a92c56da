"""On-call channels: one module per destination, each a `base.Channel`.

Every channel makes one attempt per `send` and classifies the result (`base.Outcome`); retrying,
backing off and parking are `monitor.paging.delivery`'s job, and deciding what to send (grouping,
suppression) is the dispatcher's.
"""

from monitor.channels.alertmanager import AlertmanagerChannel
from monitor.channels.base import http_client
from monitor.channels.console import ConsoleChannel
from monitor.channels.file import FileChannel
from monitor.channels.pagerduty import PagerDutyChannel
from monitor.channels.slack import SlackChannel
from monitor.channels.webhook import WebhookChannel

__all__ = [
    "AlertmanagerChannel",
    "ConsoleChannel",
    "FileChannel",
    "PagerDutyChannel",
    "SlackChannel",
    "WebhookChannel",
    "http_client",
]
